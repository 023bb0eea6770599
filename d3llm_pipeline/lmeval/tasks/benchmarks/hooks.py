"""The Python side of our benchmark tasks for lm-eval (the *.yaml files next to this one reach it through their
`!function hooks.<name>` tags): dataset loading and grading, both delegated to d3llm_pipeline.tasks.

    python -m d3llm_pipeline.lmeval --model d3llm --model_args pretrained=<dir>,decode=d3llm \
        --tasks d3llm_gsm8k_cot_zeroshot --metadata '{"data_files": "gsm8k_test.jsonl"}' --limit 8

Why our own tasks and not lm-eval's of the same name: lm-eval 0.4.13's `minerva_math` cannot be imported here
(antlr4 4.11 vs Hydra's 4.9.3) and its `humaneval` / `mbpp` grade through `evaluate.load("code_eval")`, which
fails offline; ours read local data (`data_files`), run code only in our sandbox (tasks/graders/execution.py),
and use the same graders as the rest of the pipeline. Prompts, few-shot examples and stop strings are lm-eval's
(method.md §9.1). `minerva_fewshot.json` holds the four Minerva prompt examples (Lewkowycz et al. 2022, the
few-shot set of lm-eval's minerva_math).

Code-executing tasks are marked `unsafe_code: true`: lm-eval runs them only with --confirm_run_unsafe_code
(the eval stage passes task.allow_code_execution), so grading here may execute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from d3llm_pipeline.tasks import benchmarks
from d3llm_pipeline.tasks.graders import gsm8k, humaneval, mbpp

MBPP_FEWSHOT_IDS = (2, 3, 4)  # lm-eval's mbpp few-shot examples, in this order, from the `prompt` split


def load(benchmark: str, data_files: Any = None, **_ignored: Any) -> dict[str, Any]:
    """lm-eval's custom_dataset hook: {split: Dataset}. lm-eval passes the task's metadata (and, from its CLI,
    the model_args) as keyword arguments; only `data_files` is ours."""
    splits = benchmarks.load_splits(benchmark, data_files)
    data = benchmarks.dataset_of(benchmark)
    evaluated = splits[data.eval_split]
    if benchmark == "mbpp":
        splits = {k: v.add_column("is_fewshot", [k == data.fewshot_split] * len(v)) for k, v in splits.items()}
        if data.fewshot_split in splits:
            splits[data.fewshot_split] = _fewshot_first(splits[data.fewshot_split], MBPP_FEWSHOT_IDS)
        evaluated = splits[data.eval_split]
    if data.fewshot_split is not None and data.fewshot_split not in splits:
        # lm-eval builds its few-shot sampler from this split even for 0-shot runs; an empty one is harmless, and a
        # few-shot run without it is refused before it starts (benchmarks.require_fewshot_split, eval stage)
        splits[data.fewshot_split] = evaluated.select([])
    return splits


def _fewshot_first(ds, task_ids: tuple[int, ...]):
    """`ds` reordered so the rows of `task_ids` come first, in that order (first_n sampling then takes them)."""
    order = {int(t): i for i, t in enumerate(ds["task_id"])}
    first = [order[t] for t in task_ids if t in order]
    return ds.select(first + [i for i in range(len(ds)) if i not in first])


# --- GSM8K ---------------------------------------------------------------------------------------------------

def _gsm8k(doc: dict, results: list[str], task: str) -> dict[str, int]:
    grade = gsm8k.grade(results[0], doc["answer"], task=task)
    return {"strict_match": int(grade.strict_match), "flexible_extract": int(grade.flexible_extract)}


def gsm8k_cot_results(doc: dict, results: list[str]) -> dict[str, int]:
    return _gsm8k(doc, results, "gsm8k_cot_zeroshot")


def gsm8k_results(doc: dict, results: list[str]) -> dict[str, int]:
    return _gsm8k(doc, results, "gsm8k")


# --- MATH ----------------------------------------------------------------------------------------------------

def minerva_fewshot() -> list[dict[str, str]]:
    return json.loads((Path(__file__).parent / "minerva_fewshot.json").read_text())


def math_results(doc: dict, results: list[str]) -> dict[str, int]:
    from d3llm_pipeline.tasks.graders import minerva_math  # sympy: paid only by MATH runs

    return {"math_verify": int(minerva_math.grade(results[0], doc["solution"]).correct)}


# --- HumanEval -----------------------------------------------------------------------------------------------

def _run_humaneval(doc: dict, completion: str) -> dict[str, int]:
    problem = humaneval.HumanEvalProblem(**{k: doc[k] for k in humaneval.HumanEvalProblem.__dataclass_fields__})
    result = humaneval.grade([problem], [completion], allow_code_execution=True, workers=1)[0]
    return {"pass_at_1": int(result.passed)}


def humaneval_results(doc: dict, results: list[str]) -> dict[str, int]:
    """`d3llm_humaneval`: the response continues the prompt (cut at the stop strings by the model)."""
    return _run_humaneval(doc, results[0])


def humaneval_instruct_results(doc: dict, results: list[str]) -> dict[str, int]:
    """`d3llm_humaneval_instruct` (Dream): the response continues inside the fence the gen prefix opened."""
    return _run_humaneval(doc, humaneval.instruct_completion(results[0]))


def humaneval_chat_results(doc: dict, results: list[str]) -> dict[str, int]:
    """`d3llm_humaneval_chat` (LLaDA): a free chat answer; its first fenced code block (else all of it) follows the
    prompt, so a whole re-written function replaces the stub and a bare body completes it."""
    code = mbpp.extract_code_block(_from_first_fence(results[0]))
    return _run_humaneval(doc, "\n" + code if code.lstrip().startswith(("def ", "import ", "from ")) else code)


def _from_first_fence(text: str) -> str:
    start = text.find("```")
    return text if start == -1 else text[start:]


# --- MBPP ----------------------------------------------------------------------------------------------------

def mbpp_target(doc: dict) -> str:
    """Few-shot examples show their code then [DONE]; a scored doc's target is its tests (for the log only)."""
    return doc["code"] + "\n[DONE]" if doc.get("is_fewshot") else "\n".join(doc["test_list"][:3])


def mbpp_instruct_target(doc: dict) -> str:
    return doc["code"] + "\n```" if doc.get("is_fewshot") else "\n".join(doc["test_list"][:3])


def _run_mbpp(doc: dict, code: str) -> dict[str, int]:
    return {"pass_at_1": int(mbpp.grade([doc], [code], allow_code_execution=True, workers=1)[0].passed)}


def mbpp_results(doc: dict, results: list[str]) -> dict[str, int]:
    return _run_mbpp(doc, results[0])


def mbpp_instruct_results(doc: dict, results: list[str]) -> dict[str, int]:
    return _run_mbpp(doc, mbpp.extract_code_block(results[0]))
