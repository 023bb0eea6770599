"""The task seam: what the stages ask of a task, and the registry of task kinds (`task.kind`).

A task kind is one class that is both the config schema of its `task` section (a dataclass, validated like every
section: config/schema.py `load_task`) and what the stages call. Stages never test a kind; they read
`STAGES` (which stages run on it), `EVALUATION` (how stage=eval scores it) and call the methods:

    task = load_task(cfg.task)                       # the kind's class, validated
    problems = task.problems("test")                 # graded problems (the embedded kinds)
    prompts, responses = task.encode(problems, tokenizer)      # (N, P), (N, G) token ids
    text = task.read(ids, tokenizer); graded = task.grade(text, problem)
    labels = task.label_set("train", 4000, tokenizer, pad_id, eos_id, family="llada")   # what stage=trajectory labels
    task.check_fits(model_positions)                 # a one-line error when prompt + generation do not fit
    task.identity()                                  # what enters artifact fingerprints

A kind is found by its name: `task.kind: <kind>` is the module d3llm_pipeline/tasks/<kind>.py, whose top-level
`TASK = <its class>` names the class (or, outside this package, `kind: <package.module>`). Adding a kind = that one
module + one conf/task/<name>.yaml (`defaults: [_<kind>, _self_]` plus the values that differ). No torch import here.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.registry import modules_defining


class Graded(NamedTuple):
    predicted: str | None  # the answer read from the output (None: none found)
    correct: bool
    chain_correct: bool | None = None  # the reasoning checked step by step, where the task can (None: it cannot)


@dataclass
class LabelSet:
    """What stage=trajectory decodes and how it grades the teacher's answers (one row per prompt)."""

    prompts: Any  # (N, P) long tensor, fixed width
    attention: Any  # (N, P) bool tensor: False on left padding; None = attend everywhere
    references: Any  # (N, G) long tensor of the dataset's reference responses, when it has token-level ones; None
    answers: list[str]  # ground truth per row, as stored
    text_of: Any  # generation region ids (G,) -> the answer text
    grade: Any  # (text, row) -> (extracted answer, correct)
    truncated: int = 0  # prompts cut to fit the width

    def __len__(self) -> int:
        return len(self.answers)


class Task:
    """The base of every task kind's class (a dataclass subclass that also declares `kind`, `name`, `gen_length`).

    The defaults here are those of a kind that only some stages use; each kind overrides what it provides.
    """

    STAGES: ClassVar[frozenset[str] | None] = None  # the stages that run on this kind; None: every stage
    EVALUATION: ClassVar[str | None] = None  # stage=eval's engine: "in_house" (evaluation.py) | "lm_eval"
    GRADED_SPLITS: ClassVar[bool] = False  # problems(split) gives graded train / validation / test splits

    # Whether the kind may run the model's code. Every kind accepts task.allow_code_execution, so one command line
    # can opt in for a suite's code benchmarks (stage=pipeline passes it to every step); where no code runs, it is
    # left out of identity() (a permission, not a setting: artifacts stay reusable either way).
    RUNS_CODE: ClassVar[bool] = False

    def identity(self) -> dict[str, Any]:
        """The section as it enters artifact fingerprints (`kind` left out: it is implied by the other fields, and
        artifacts fingerprinted before it existed stay reusable)."""
        skip = {"kind"} if self.RUNS_CODE else {"kind", "allow_code_execution"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def check_fits(self, limit: int | None) -> None:
        """Raise a ConfigError when prompt + generation exceed the model's `limit` positions (None: no limit)."""
        need = self.prompt_length + self.gen_length
        if limit is not None and need > limit:
            raise ConfigError(f"task.prompt_length + task.gen_length = {need} exceeds the model's {limit} positions; "
                              "lower task.gen_length or retrain the teacher")

    def problems(self, split: str) -> list:
        raise ConfigError(f"task={self.name} has no graded {split} split of its own")

    def encode(self, problems: list, tokenizer) -> tuple[Any, Any]:
        raise NotImplementedError

    def read(self, ids, tokenizer) -> str:
        raise NotImplementedError

    def grade(self, text: str, problem) -> Graded:
        raise NotImplementedError

    def label_set(self, split: str, n: int, tokenizer, pad_id: int, eos_id: int, family: str) -> LabelSet:
        raise ConfigError(f"task={self.name} has no prompts for stage=trajectory to label")


@functools.cache
def task_kinds() -> tuple[str, ...]:
    """The kinds this package defines: the modules of d3llm_pipeline/tasks/ with a top-level `TASK = ...` (read, not
    imported: a kind's module may pull in datasets or lm-eval helpers, so it is imported when it is used)."""
    return modules_defining(Path(__file__).parent, "TASK")


def task_class(kind: str) -> type[Task]:
    """The class of task kind `kind` (a module of this package, or `package.module`: its `TASK`), or one ConfigError
    line."""
    module = f"{__package__}.{kind}" if kind in task_kinds() else kind if "." in kind else None
    if module is None:
        raise ConfigError(f"task.kind must be one of {', '.join(task_kinds())} (or package.module defining TASK), "
                          f"got {kind!r}")
    try:
        cls = importlib.import_module(module).TASK
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"task.kind={kind}: cannot import the TASK of {module} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task.kind={kind}: {module}.TASK is not a d3llm_pipeline.tasks.base.Task subclass")
    return cls
