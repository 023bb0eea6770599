"""The built-in synthetic reasoning task, `task=arith` (the embedded default): a mini-GSM generated from a seed.

Each problem is a short word problem over a running total that stays within 0..9, answered by a chain of thought
of single-digit steps and a final ``#### N``::

    prompt:   sue has 5 pens . loses 4 . buys 3 . gives 1 . how many ? [SEP]
    response: 5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3 #### 3

Everything is word-level over the fixed ``VOCAB`` (specials have ids 0..3), so the task needs no downloaded
tokenizer. `ArithTask` is both the `task` config section's schema and the task the stages call (tasks/base.py)::

    task = ArithTask(n_train=5000)
    splits = make_splits(task)                          # {"train", "validation", "test"}: pure functions of the fields
    prompt_ids, response_ids = task.encode(splits["test"], build_tokenizer())   # tasks/encoding.py layout
    task.grade(task.read(generated_ids[0], tokenizer), splits["test"][0])       # Graded(predicted, correct, chain)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from d3llm_pipeline.errors import check
from d3llm_pipeline.tasks.base import Graded
from d3llm_pipeline.tasks.encoding import EOS, MASK, PAD, SEP, decode_response, encode  # noqa: F401  (re-exported)
from d3llm_pipeline.tasks.synthetic import Problem, SyntheticTask, make_splits  # noqa: F401  (re-exported)

NAMES = ("sue", "tom", "ann", "bob", "kim", "joe", "eva", "max")
ITEMS = ("pens", "apples", "cards", "coins", "books", "stamps")
PLUS_VERBS = ("buys", "gets", "finds")
MINUS_VERBS = ("loses", "gives", "sells")
WORDS = ("has", ".", "how", "many", "?", "+", "-", "=", ",", "####")
DIGITS = tuple(str(d) for d in range(10))

# Fixed order: ids are list positions, so they must never be reshuffled.
VOCAB: list[str] = [PAD, MASK, EOS, SEP, *NAMES, *ITEMS, *PLUS_VERBS, *MINUS_VERBS, *WORDS, *DIGITS]

MAX_VALUE = 9  # the running total (and every amount) is a single digit token


def max_prompt_tokens(n_steps: int) -> int:
    """Prompt length in tokens: ``name has v item .`` + 3 per step + ``how many ? [SEP]``."""
    return 5 + 3 * n_steps + 4


def max_response_tokens(n_steps: int) -> int:
    """Response length in tokens: 5 per step (``a op b = c``), 1 per ``,`` separator, 2 for ``#### N``."""
    return 5 * n_steps + (n_steps - 1) + 2


def _check_steps(min_steps: int, max_steps: int) -> None:
    if min_steps < 1:
        raise ValueError(f"min_steps must be >= 1, got {min_steps}")
    if max_steps < min_steps:
        raise ValueError(f"max_steps ({max_steps}) must be >= min_steps ({min_steps})")


def generate_problem(rng: random.Random, min_steps: int = 3, max_steps: int = 5) -> Problem:
    """Draw one problem from ``rng``; the total stays within 0..9 after every step."""
    _check_steps(min_steps, max_steps)
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    total = rng.randint(2, MAX_VALUE)
    prompt = [f"{name} has {total} {item} ."]
    steps = []
    for _ in range(rng.randint(min_steps, max_steps)):
        # From total t there are exactly 9 valid (direction, amount) pairs:
        # plus 1..9-t and minus 1..t. Index them 0..8 and draw one uniformly.
        k = rng.randrange(MAX_VALUE)
        room = MAX_VALUE - total
        if k < room:
            amount, op, verbs, new = k + 1, "+", PLUS_VERBS, total + k + 1
        else:
            amount = k - room + 1
            op, verbs, new = "-", MINUS_VERBS, total - amount
        prompt.append(f"{rng.choice(verbs)} {amount} .")
        steps.append(f"{total} {op} {amount} = {new}")
        total = new
    prompt.append(f"how many ? {SEP}")
    response = " , ".join(steps) + f" #### {total}"
    return Problem(prompt=" ".join(prompt), response=response, answer=total)



@dataclass
class ArithTask(SyntheticTask):
    """`task=arith`: the schema of its config section (every split is a pure function of these fields) and the
    task the stages call. Defaults are conf/task/arith.yaml's (the embedded default)."""

    kind: str = "arith"
    name: str = "arith"
    seed: int = 1234
    prompt_length: int = 24  # fixed-width prompt region, right-padded with [PAD]
    gen_length: int = 64  # generation region: response then [EOS] padding; 4 decode blocks of 16
    min_steps: int = 2  # 2..5 steps -> 13/19/25/31 response tokens: a typical response spans >= 2 blocks of 16
    max_steps: int = 5
    n_train: int = 50000
    n_val: int = 200
    n_test: int = 1000  # held-out chains never occur in train
    allow_code_execution: bool = False  # runs no code: accepted so a command line can opt in for code benchmarks

    def __post_init__(self) -> None:
        check(1 <= self.min_steps <= self.max_steps, "task.min_steps must be >= 1 and <= task.max_steps, "
              f"got {self.min_steps}..{self.max_steps}")
        super().__post_init__()

    # --- what a subclass (arith_long) changes: how a sample is drawn, sized and graded
    def _shape(self) -> str:
        return f"task.max_steps={self.max_steps}"

    def prompt_tokens(self) -> int:
        """The longest prompt of a sample."""
        return max_prompt_tokens(self.max_steps)

    def response_tokens(self) -> int:
        """The longest response of a sample (without EOS)."""
        return max_response_tokens(self.max_steps)

    def draw(self, rng: random.Random) -> Problem:
        return generate_problem(rng, self.min_steps, self.max_steps)

    def grade(self, text: str, problem: Problem) -> Graded:
        answer = extract_answer(text)
        return Graded(None if answer is None else str(answer), answer == problem.answer, chain_correct(text))

    def answer_text(self, problem: Problem) -> str:
        return str(problem.answer)

    def held_out_key(self, problem: Problem) -> str:
        return problem.response  # no held-out chain of thought occurs in train


INT_PATTERN = _INT = re.compile(r"-?[0-9]+")
_STEP = re.compile(r"([0-9]+)\s*([+-])\s*([0-9]+)\s*=\s*([0-9]+)")


def extract_answer(text: str) -> int | None:
    """The integer right after the LAST ``####``, or None if absent or not an integer."""
    if "####" not in text:
        return None
    words = text.rsplit("####", 1)[1].split()
    # A strict pattern (not int()) so that e.g. "1_0" or "[MASK]" do not count.
    if not words or not _INT.fullmatch(words[0]):
        return None
    return int(words[0])


def grade(output_text: str, answer: int) -> bool:
    """True when the final answer in ``output_text`` equals ``answer``."""
    return extract_answer(output_text) == answer


def chain_correct(output_text: str) -> bool:
    """True when the chain before the first ``####`` is non-empty and every
    ``,``-separated step has the form ``a op b = c`` with correct arithmetic.

    A step that does not parse (e.g. still contains ``[MASK]``) counts as wrong, so an
    empty or garbled chain is not "correct". Continuity between steps is not checked.
    """
    chain = output_text.split("####", 1)[0]
    steps = [s.strip() for s in chain.split(",")]
    if not steps or steps == [""]:
        return False
    for step in steps:
        m = _STEP.fullmatch(step)
        if m is None:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if (a + b if op == "+" else a - b) != c:
            return False
    return True


TASK = ArithTask
