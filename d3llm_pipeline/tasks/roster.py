"""`task=roster`: call the roll from either end — number everyone present, in the prompt's order or its reverse.
An embedded task whose correct response is not unique, so the teacher's confidence, not the block schedule, limits
how many tokens it commits per forward.

    prompt:   sue has 3 pens . tom has 5 cards . ann has 2 coins . [PAD] x 5 kim has 7 books . [PAD] x 10
              max has 1 coins . how many ? [SEP]
    response: 1 sue , 2 tom , 3 ann , 4 kim , 5 max    or    1 max , 2 kim , 3 ann , 4 tom , 5 sue

Why it is built this way (issue 25): both arith tasks have exactly one right continuation, so the teacher is certain
about whole blocks at once and the block schedule caps parallel decoding. Here two forms are correct and the
training set draws each half of the time (`orders="ends"`, the default), so the teacher learns the mixture: until it
has written one end, every slot but the middle one is a coin toss between two people. Committing them in one forward
tosses each coin on its own and half the time mixes the forms (someone named twice), which the grader rejects (as
it does anyone absent, anyone left out, or a wrong number). The teacher therefore waits for one name before the
rest, while the numbers, commas and EOS are certain at once; a distilled student, trained on the form the teacher
chose for each prompt (the trajectory's `predicted` column records it), learns to commit to a form in its first
forward: what pseudo-trajectory distillation is for (docs/method.md §2).

`orders="any"` makes all k! orders correct (drawn uniformly). The teacher then chooses one person per forward, by
near-ties the prompt's counts and items break, an order a distilled student learns only in part; off the teacher's
order it names someone twice, so distillation cost 7-19 points of accuracy (docs/embedded.md).

Layout: each of the 8 names has its own fixed 5-token slot (`name has n item .` in `NAMES` order, [PAD] where that
person is absent), so who is present is read from fixed positions, as the tiny teacher learns fastest (its learned
absolute positions copy from fixed places, docs/tiny_teacher.md). The counts and items make prompts distinct; the
response does not use them. k = 5 people per sample by default (`task.min_people` / `task.max_people`, 2..8): a
44-token prompt and a 14-token response (3 per entry, less the last comma): one decode block of 16 with its EOS, in
a 32-token generation region. No new words: the vocabulary is arith's. Held-out prompts never occur in train; a set
of people can (there are 56 sets of 5), so the splits differ in the counts and items. Four earlier designs and why
they went: docs/embedded.md#the-task-with-many-right-answers-taskroster.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from d3llm_pipeline.errors import check
from d3llm_pipeline.tasks.arith import ITEMS, NAMES, PAD, SEP
from d3llm_pipeline.tasks.base import Graded
from d3llm_pipeline.tasks.synthetic import Problem, SyntheticTask

SLOT = 5  # prompt tokens per fact: "name has n item ."
ENTRY = 2  # response tokens per entry: "j name" (entries are joined by " , ")


def prompt_tokens() -> int:
    return SLOT * len(NAMES) + 4  # one slot per name + "how many ? [SEP]"


def response_tokens(max_people: int) -> int:
    return (ENTRY + 1) * max_people - 1


ORDERS = ("any", "ends")  # task.orders: every order of the k people is correct / prompt order or its reverse


def generate_roster(rng: random.Random, min_people: int, max_people: int, orders: str = "any") -> Problem:
    """k people with distinct names in their names' slots, each holding 1..9 of an item; the response numbers them
    in one of the correct orders (`orders`), drawn uniformly. `answers`: the names present, in prompt order."""
    k = rng.randint(min_people, max_people)
    present = sorted(rng.sample(range(len(NAMES)), k))
    slots = [" ".join([PAD] * SLOT)] * len(NAMES)
    for i in present:
        slots[i] = f"{NAMES[i]} has {rng.randint(1, 9)} {rng.choice(ITEMS)} ."
    names = tuple(NAMES[i] for i in present)
    if orders == "ends":  # from either end of the prompt, one draw (the "any" stream is left as it was)
        form = list(names) if rng.random() < 0.5 else list(reversed(names))
    else:
        form = rng.sample(names, k)  # one of the k! correct responses
    return Problem(prompt=" ".join(slots) + f" how many ? {SEP}", response=numbered(form), answer=k, answers=names)


def numbered(names) -> str:
    return " , ".join(f"{j} {name}" for j, name in enumerate(names, start=1))


def read_names(text: str) -> list[str] | None:
    """The names of a numbered list in the order written; None unless every entry is `j name` with j = 1, 2, ..."""
    entries = [part.split() for part in text.split(",")]
    if any(len(e) != 2 or e[0] != str(j) for j, e in enumerate(entries, start=1)):
        return None
    return [e[1] for e in entries]


def grade_roster(text: str, names: tuple[str, ...], orders: str = "any") -> bool:
    """Everyone present exactly once, numbered 1..k, in any order (`orders="ends"`: in prompt order or its reverse
    only): a repeated, missing, absent or garbled entry is wrong, and so is a mixture of two orders."""
    found = read_names(text)
    if found is None:
        return False
    return found in (list(names), list(reversed(names))) if orders == "ends" else sorted(found) == sorted(names)


@dataclass
class RosterTask(SyntheticTask):
    """`task=roster`'s schema and task. Defaults are conf/task/roster.yaml's."""

    kind: str = "roster"
    name: str = "roster"
    seed: int = 1234
    # k = 5 people in every sample (56 sets of names). A fixed length keeps the EOS position out of what distillation
    # can disturb (with k = 4..8 the student forgot where to stop: 17% of its answers one person short), and 5 keeps
    # the response in one block (with k = 6 the last name falls in block 2, which multi-block decoding opens before
    # block 1's names are chosen: docs/embedded.md)
    min_people: int = 5
    max_people: int = 5  # at most len(NAMES) = 8 (names are distinct within a sample)
    # which orders are correct: "ends" (the prompt's order or its reverse: two forms, so a mixture of them, e.g.
    # "1 tom , 2 kim , 3 max , 4 kim , 5 tom", is the typical parallel-decoding error) or "any" (all k!: the
    # teacher's order is then too erratic for a student to learn; docs/embedded.md)
    orders: str = "ends"
    prompt_length: int = 44  # 8 name slots of 5 tokens + "how many ? [SEP]"
    gen_length: int = 32  # 2 decode blocks of 16: the response (14 tokens for k = 5; 23 at most) + EOS padding
    n_train: int = 50000
    n_val: int = 200
    n_test: int = 1000  # held-out prompts never occur in train
    allow_code_execution: bool = False  # runs no code: accepted so a command line can opt in for code benchmarks

    SPLIT_STREAM: ClassVar[str] = "roster"

    def __post_init__(self) -> None:
        check(2 <= self.min_people <= self.max_people <= len(NAMES),
              f"task.min_people and task.max_people must satisfy 2 <= min <= max <= {len(NAMES)}, "
              f"got {self.min_people}..{self.max_people}")
        check(self.orders in ORDERS, f"task.orders must be one of {', '.join(ORDERS)}, got {self.orders!r}")
        super().__post_init__()

    def identity(self) -> dict:
        """As the base's, without `orders` at its default: artifacts made before it existed stay reusable."""
        out = super().identity()
        if self.orders == "any":
            out.pop("orders")
        return out

    def _shape(self) -> str:
        return f"task.max_people={self.max_people}"

    def prompt_tokens(self) -> int:
        return prompt_tokens()

    def response_tokens(self) -> int:
        return response_tokens(self.max_people)

    def draw(self, rng: random.Random) -> Problem:
        return generate_roster(rng, self.min_people, self.max_people, self.orders)

    def grade(self, text: str, problem: Problem) -> Graded:
        # predicted: the names in the order written, so a trajectory records the form the teacher chose
        found = read_names(text)
        return Graded(None if found is None else " ".join(found), grade_roster(text, problem.answers, self.orders),
                      None)

    def answer_text(self, problem: Problem) -> str:
        return " ".join(problem.answers)  # who is present, in prompt order


TASK = RosterTask
