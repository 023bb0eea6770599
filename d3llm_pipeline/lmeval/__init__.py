"""lm-evaluation-harness integration: our decoders as the lm-eval model `d3llm`, and the arith task for lm-eval.

    from d3llm_pipeline.lmeval import D3LLMEvalModel, task_manager
    out = lm_eval.simple_evaluate(model=D3LLMEvalModel(pretrained=dir, decode="d3llm"), tasks=["arith"],
                                  task_manager=task_manager())

Shell: `python -m d3llm_pipeline.lmeval --model d3llm --model_args pretrained=<dir>,decode=d3llm --tasks arith`
(our task dir is added to --include_path automatically). Importing `D3LLMEvalModel` (from here or from
lmeval.model) registers the model; the package itself stays light (no torch), so the CLI's checks run first.
"""

from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def __getattr__(name: str) -> Any:
    if name == "D3LLMEvalModel":  # torch + lm-eval's model base: imported when first asked for
        from d3llm_pipeline.lmeval.model import D3LLMEvalModel

        return D3LLMEvalModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_manager(*, lm_eval_tasks: bool = True, **metadata):
    """An lm-eval TaskManager that knows our tasks (d3llm_pipeline/lmeval/tasks); metadata goes to them.

    lm_eval_tasks=False leaves out lm-eval's own ~14k task files, whose index takes ~12 s to build on a CPU core:
    the eval stage runs only our tasks (their `include:`s point at our own files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=lm_eval_tasks, metadata=metadata or None)


__all__ = ["TASKS_DIR", "D3LLMEvalModel", "task_manager"]
