"""`task=arith_long`: several independent arith problems asked and answered in one sample, so a response spans many
decode blocks (where multi-block decoding, the KV cache and early stop can show what they do) while each piece
of reasoning stays as easy as the embedded task's.

    task = ArithLongTask()                          # 4 problems of 2-4 steps, prompt 84, generation 128
    splits = make_splits(task)                      # tasks/arith.py: the same splits machinery
    p = splits["test"][0]
    p.prompt    # "sue has 5 pens . loses 4 . how many ? [PAD] ... tom has 2 cards . gets 3 . how many ? ... [SEP]"
    p.response  # "5 - 4 = 1 #### 1 2 + 3 = 5 #### 5 ..."
    task.grade("... #### 1 ... #### 5 ...", p)      # correct when every sub-answer is

Layout: each sub-prompt is right-padded with [PAD] to a fixed slot (`slot_tokens(max_steps)`), so sub-problem k's
numbers always sit at the same positions (the tiny teacher's learned absolute positions copy from fixed places:
docs/tiny_teacher.md); the sub-responses follow one another, each ending in its own `#### N`. A sample is correct
when every sub-answer is. No new words: the vocabulary (and so every existing checkpoint's tokenizer) is unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from d3llm_pipeline.errors import check
from d3llm_pipeline.tasks import arith
from d3llm_pipeline.tasks.base import Graded


def slot_tokens(max_steps: int) -> int:
    """A sub-prompt's fixed width: ``name has v item .`` + 3 per step + ``how many ?`` (its [SEP] is shared)."""
    return arith.max_prompt_tokens(max_steps) - 1


def prompt_tokens(max_steps: int, k: int) -> int:
    return k * slot_tokens(max_steps) + 1  # + the final [SEP]


def response_tokens(max_steps: int, k: int) -> int:
    return k * arith.max_response_tokens(max_steps)


def generate_composite(rng: random.Random, min_steps: int, max_steps: int, k: int) -> arith.Problem:
    """k independent problems from `rng`: padded sub-prompts, then one [SEP]; sub-responses one after another."""
    parts = [arith.generate_problem(rng, min_steps, max_steps) for _ in range(k)]
    width = slot_tokens(max_steps)
    prompts = []
    for part in parts:
        words = part.prompt.split()[:-1]  # without its [SEP]
        prompts.append(" ".join(words + [arith.PAD] * (width - len(words))))
    return arith.Problem(prompt=" ".join(prompts) + f" {arith.SEP}", response=" ".join(p.response for p in parts),
                         answer=parts[-1].answer, answers=tuple(p.answer for p in parts))


def extract_answers(text: str) -> list[int | None]:
    """The value after every ``####`` in order (None where it is not an integer)."""
    out = []
    for segment in text.split("####")[1:]:
        words = segment.split()
        out.append(int(words[0]) if words and arith.INT_PATTERN.fullmatch(words[0]) else None)
    return out


def grade_all(text: str, answers: tuple[int, ...]) -> bool:
    """Every sub-answer right, in order, and no extra ones."""
    return extract_answers(text) == list(answers)


def chains_correct(text: str, k: int) -> bool:
    """Each of the k chains (the text before each ``####``, after the previous answer) is arithmetically right."""
    segments = text.split("####")
    if len(segments) != k + 1:
        return False
    chains = [segments[0]] + [" ".join(s.split()[1:]) for s in segments[1:-1]]  # drop the previous answer
    return all(arith.chain_correct(chain + " ####") for chain in chains)


@dataclass
class ArithLongTask(arith.ArithTask):
    """`task=arith_long`'s schema and task: arith's fields plus how many problems a sample holds. Defaults are
    conf/task/arith_long.yaml's: 4 chains of 2-4 steps (~76 response tokens, about 5 blocks of 16)."""

    kind: str = "arith_long"
    name: str = "arith_long"
    problems_per_sample: int = 4
    max_steps: int = 4  # 4 slots of 20 + [SEP] = 81 prompt tokens; 4 x 25 + EOS = 101 response tokens at most
    prompt_length: int = 84
    gen_length: int = 128  # 8 decode blocks of 16

    def __post_init__(self) -> None:
        check(self.problems_per_sample >= 1,
              f"task.problems_per_sample must be >= 1, got {self.problems_per_sample}")
        super().__post_init__()

    def _shape(self) -> str:
        return f"task.max_steps={self.max_steps}, task.problems_per_sample={self.problems_per_sample}"

    def prompt_tokens(self) -> int:
        return prompt_tokens(self.max_steps, self.problems_per_sample)

    def response_tokens(self) -> int:
        return response_tokens(self.max_steps, self.problems_per_sample)

    def draw(self, rng: random.Random) -> arith.Problem:
        return generate_composite(rng, self.min_steps, self.max_steps, self.problems_per_sample)

    def grade(self, text: str, problem: arith.Problem) -> Graded:
        found = extract_answers(text)
        predicted = " ".join("?" if a is None else str(a) for a in found) or None  # every sub-answer, in order
        return Graded(predicted, found == list(problem.answers), chains_correct(text, len(problem.answers)))

    def answer_text(self, problem: arith.Problem) -> str:
        return " ".join(map(str, problem.answers))


TASK = ArithLongTask
