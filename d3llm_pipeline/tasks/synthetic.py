"""What the embedded synthetic tasks (arith, arith_long, roster) share: splits drawn from a seed, the word-level
encoding, grading through the task, and the label set stage=trajectory decodes.

A kind subclasses `SyntheticTask` as a dataclass with the fields `seed`, `prompt_length`, `gen_length`, `n_train`,
`n_val`, `n_test` and says how one sample is drawn (`draw`), sized (`prompt_tokens`, `response_tokens`), graded
(`grade`) and what must not leak from the held-out splits into train (`held_out_key`)::

    splits = make_splits(task)          # {"train", "validation", "test"}: pure functions of the task's fields
    prompts, responses = task.encode(splits["test"], build_tokenizer())
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from d3llm_pipeline.errors import check
from d3llm_pipeline.tasks.base import Graded, LabelSet, Task
from d3llm_pipeline.tasks.encoding import decode_response, encode

_MAX_STALL = 10_000  # consecutive rejected draws before a split is declared impossible


@dataclass(frozen=True)
class Problem:
    """One sample: ``prompt`` ends with `` [SEP]``; ``response`` (one correct form of it) carries no EOS."""

    prompt: str
    response: str
    answer: int | str
    answers: tuple[Any, ...] = ()  # arith_long: every sub-answer; roster: every fact (empty: one answer, `answer`)


class SyntheticTask(Task):
    """The base of the embedded kinds (a dataclass subclass declares the fields; see the module docstring)."""

    EVALUATION: ClassVar[str] = "in_house"
    GRADED_SPLITS: ClassVar[bool] = True
    # prefix of the split streams' seeds: arith and arith_long share "arith" (their splits predate this class)
    SPLIT_STREAM: ClassVar[str] = "arith"

    def __post_init__(self) -> None:
        need = self.response_tokens() + 1  # the longest response plus at least one EOS
        check(self.gen_length >= need, f"task.gen_length must be >= {need} for {self._shape()}, got {self.gen_length}")
        need = self.prompt_tokens()
        check(self.prompt_length >= need,
              f"task.prompt_length must be >= {need} for {self._shape()}, got {self.prompt_length}")
        for key in ("n_train", "n_val"):  # 0: a split not drawn (e.g. lm-eval's arith task needs no train split)
            check(getattr(self, key) >= 0, f"task.{key} must be >= 0, got {getattr(self, key)}")
        check(self.n_test >= 1, f"task.n_test must be >= 1, got {self.n_test}")

    # --- what a kind says
    def _shape(self) -> str:
        """The fields that size a sample, as an error message names them."""
        raise NotImplementedError

    def prompt_tokens(self) -> int:
        """The longest prompt of a sample."""
        raise NotImplementedError

    def response_tokens(self) -> int:
        """The longest response of a sample (without EOS)."""
        raise NotImplementedError

    def draw(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    def answer_text(self, problem: Problem) -> str:
        """The ground truth as stage=trajectory stores it."""
        raise NotImplementedError

    def held_out_key(self, problem: Problem) -> str:
        """What no train sample may share with a validation or test sample."""
        return problem.prompt

    # --- the Task interface
    @functools.cached_property
    def splits(self) -> dict[str, list[Problem]]:
        """make_splits(self), drawn once per task object (50,000 train problems take a while)."""
        return make_splits(self)

    def problems(self, split: str) -> list[Problem]:
        return self.splits[split]

    def encode(self, problems: list[Problem], tokenizer) -> tuple[Any, Any]:
        return encode(problems, tokenizer, self.prompt_length, self.gen_length)

    def read(self, ids, tokenizer) -> str:
        return decode_response(ids, tokenizer)

    def label_set(self, split: str, n: int, tokenizer, pad_id: int, eos_id: int, family: str) -> LabelSet:
        problems = self.problems(split)[:n]
        prompts, references = self.encode(problems, tokenizer)

        def grade(text: str, i: int) -> tuple[str | None, bool]:
            graded: Graded = self.grade(text, problems[i])
            return graded.predicted, graded.correct

        return LabelSet(prompts, None, references, [self.answer_text(p) for p in problems],
                        lambda ids: decode_response(ids, tokenizer), grade)


def _draw_unique(rng: random.Random, n: int, task: SyntheticTask, reject: Callable[[Problem], bool],
                 split: str) -> list[Problem]:
    """Draw ``n`` problems, redrawing any that ``reject`` flags."""
    out: list[Problem] = []
    # Realistic rejection rates are a few percent, so a long run of consecutive
    # rejections means the problem space is exhausted; stop instead of looping forever.
    stalled = 0
    while len(out) < n:
        p = task.draw(rng)
        if reject(p):
            stalled += 1
            if stalled >= _MAX_STALL:
                raise ValueError(f"could not draw {n} distinct {split} problems with {task._shape()}; the problem "
                                 "space is too small")
        else:
            out.append(p)
            stalled = 0
    return out


def make_splits(task: SyntheticTask) -> dict[str, list[Problem]]:
    """Deterministic train/validation/test splits from ``task.seed``.

    Held-out splits are drawn first so that train can be filtered against them: no train problem shares its
    `held_out_key` (arith: the chain of thought; roster: the prompt) with a validation or test problem, so held-out
    accuracy measures generalisation rather than recall.
    """
    # String seeds are hashed with SHA-512 by `random`, so the streams are stable across
    # processes (unaffected by PYTHONHASHSEED) and independent of one another.
    stream = f"{task.SPLIT_STREAM}-{task.seed}"
    test_rng, val_rng = random.Random(f"{stream}-test"), random.Random(f"{stream}-validation")
    train_rng = random.Random(f"{stream}-train")
    key = task.held_out_key

    test_prompts: set[str] = set()
    test_keys: set[str] = set()

    def reject_test(p: Problem) -> bool:
        if p.prompt in test_prompts:
            return True
        test_prompts.add(p.prompt)
        test_keys.add(key(p))
        return False

    test = _draw_unique(test_rng, task.n_test, task, reject_test, "test")

    val_prompts: set[str] = set()
    val_keys: set[str] = set()

    def reject_val(p: Problem) -> bool:
        if key(p) in test_keys or p.prompt in val_prompts:
            return True
        val_prompts.add(p.prompt)
        val_keys.add(key(p))
        return False

    validation = _draw_unique(val_rng, task.n_val, task, reject_val, "validation")

    held_out = test_keys | val_keys
    train = _draw_unique(train_rng, task.n_train, task, lambda p: key(p) in held_out, "train")
    return {"train": train, "validation": validation, "test": test}
