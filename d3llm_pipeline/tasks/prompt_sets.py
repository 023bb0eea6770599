"""Real prompt sets for pseudo-trajectories (method.md §1.1, §1.3): rows with a question and a ground-truth answer,
encoded for a real-family teacher and graded the way d3LLM keeps correct samples.

    rows = load_prompt_rows(task)                          # a datasets.Dataset (task: a PromptSetTask)
    prompt_ids, truncated = encode_prompts(rows["question"], tokenizer, prompt_length=256, chat_template=False)
    mask = prompt_attention(prompt_ids, pad_id)            # (N, P) bool, or None when nothing is padded
    predicted, correct = grade_answer(text, gt_answer, "boxed")

Layout: every prompt is LEFT-padded with PAD to `prompt_length`, so all generation regions start at the same column
(the fixed layout our decoders and distillation use), and the pad positions are masked out of attention wherever
the model runs on these prompts (trajectory decoding and distillation). Prompts longer than `prompt_length` keep
their last `prompt_length` tokens (the question's end and the generation prompt) and are counted.

Sources: `Zigeng/dParallel_LLaDA_Distill_Data` (`question` / `gt_answer`), a benchmark's train split such as
`openai/gsm8k` (`question` / `answer`), or a local copy (`task.data_files`), through tasks/benchmarks.py's loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from d3llm_pipeline.errors import check
from d3llm_pipeline.tasks.base import LabelSet, Task
from d3llm_pipeline.tasks.benchmarks import BenchmarkData, load_data
from d3llm_pipeline.tasks.graders import gsm8k

if TYPE_CHECKING:
    import torch

ANSWER_FORMATS = ("boxed", "gsm8k", "none")


def load_prompt_rows(task) -> Any:
    """The split `task.split` of the prompt set (a Hub id or `task.data_files`), checked for its two fields."""
    data = BenchmarkData(task.source, (task.config,), task.split, None, (task.question_field, task.answer_field))
    return load_data(task.source, data, task.data_files)[task.split]


def encode_prompts(questions: list[str], tokenizer, prompt_length: int, chat_template: bool,
                   pad_id: int) -> tuple[torch.Tensor, int]:
    """(prompt_ids (N, prompt_length) left-padded with `pad_id`, how many prompts were cut to fit)."""
    import torch  # here, not at the top: config validation imports this module and must stay fast

    rows, truncated = [], 0
    for q in questions:
        if chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            ids = tokenizer(q, add_special_tokens=True)["input_ids"]
        if len(ids) > prompt_length:
            ids, truncated = ids[-prompt_length:], truncated + 1
        rows.append([pad_id] * (prompt_length - len(ids)) + list(ids))
    return torch.tensor(rows, dtype=torch.long), truncated


def prompt_attention(prompt_ids: torch.Tensor, pad_id: int) -> torch.Tensor | None:
    """(N, P) bool: False on each row's leading run of `pad_id` (left padding), True from its first other token.

    None when no row starts with padding, so right-padded layouts (the embedded task's, arith on a real family)
    keep attending everywhere exactly as before.
    """
    real = prompt_ids != pad_id
    if bool(real[:, 0].all()):
        return None
    return real.long().cummax(dim=1).values.bool()


def last_boxed(text: str) -> str | None:
    """The content of the LAST ``\\boxed{...}`` in `text` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: no complete answer


def normalise(answer: str) -> str:
    """method.md §1.3: strip, lower-case, delete commas and whitespace."""
    return "".join(answer.strip().lower().replace(",", "").split())


def grade_answer(text: str, reference: str | None, answer_format: str) -> tuple[str | None, bool]:
    """(the answer extracted from the teacher's `text`, whether it matches `reference`).

    boxed (method.md §1.3, dParallel data): the last \\boxed{} of the text against the reference's own boxed
    content (or the raw reference); an empty reference (code prompts) counts as correct. gsm8k: the reference's
    "#### N"; the text's last \\boxed{} when it has one, else its last number (lm-eval's flexible extract).
    none: nothing is graded, every sample is kept.
    """
    if answer_format == "none":
        return None, True
    if answer_format == "gsm8k":
        predicted = last_boxed(text)
        if predicted is None:
            predicted = gsm8k.extract_flexible(text)
        return predicted, gsm8k.normalize(predicted) == gsm8k.reference_answer(reference or "")
    if answer_format != "boxed":
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    if not reference:
        return last_boxed(text), True
    gold = last_boxed(reference) if "\\boxed" in reference else reference
    predicted = last_boxed(text)
    return predicted, predicted is not None and gold is not None and normalise(predicted) == normalise(gold)


@dataclass
class PromptSetTask(Task):
    """Questions + ground-truth answers for the teacher to label (method.md §1.1; tasks/prompt_sets.py)."""

    kind: str = "prompt_sets"
    name: str = "prompts"
    source: str = ""  # a Hub dataset id (its cache offline), or the name shown for task.data_files
    config: str | None = None  # the Hub dataset's config (gsm8k: main)
    split: str = "train"
    data_files: Any = None  # a local copy: <file of the split> or {split: file}
    question_field: str = "question"
    answer_field: str = "gt_answer"
    answer_format: str = "boxed"  # boxed (method.md §1.3) | gsm8k ("#### N") | none (keep every sample)
    chat_template: bool | None = None  # null: the family's (families.<family>.chat_template, else false)
    prompt_length: int = 256  # prompts are left-padded (or cut from the left) to this many tokens
    gen_length: int = 256
    families: dict[str, dict[str, bool]] = field(default_factory=dict)
    allow_code_execution: bool = False  # runs no code: accepted so a command line can opt in for code benchmarks

    # labelled (in shards, then merged), then distilled on
    STAGES: ClassVar[frozenset[str]] = frozenset({"trajectory", "trajectory_merge", "distill", "report"})

    def __post_init__(self) -> None:
        check(self.kind == "prompt_sets", f"task.kind must be prompt_sets here, got {self.kind!r}")
        check(bool(self.source) or self.data_files is not None,
               "task.source must name a Hub dataset (e.g. Zigeng/dParallel_LLaDA_Distill_Data) or task.data_files "
               "a local copy")
        check(self.answer_format in ANSWER_FORMATS,
               f"task.answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        check(self.prompt_length >= 1 and self.gen_length >= 1,
               f"task.prompt_length and task.gen_length must be >= 1, got {self.prompt_length}, {self.gen_length}")

    def chat_for(self, family: str) -> bool:
        if self.chat_template is not None:
            return self.chat_template
        return bool(self.families.get(family, {}).get("chat_template", False))

    def label_set(self, split: str, n: int, tokenizer, pad_id: int, eos_id: int, family: str) -> LabelSet:
        """The first `n` rows of the prompt set (`task.split`; `split` is the embedded task's key): left-padded
        prompts, answers graded with `task.answer_format`."""
        rows = load_prompt_rows(self)
        rows = rows.select(range(min(n, len(rows))))
        questions = [str(q) for q in rows[self.question_field]]
        answers = ["" if a is None else str(a) for a in rows[self.answer_field]]
        prompts, truncated = encode_prompts(questions, tokenizer, self.prompt_length, self.chat_for(family), pad_id)

        def text_of(ids) -> str:
            ids = ids.tolist()
            return tokenizer.decode(ids[: ids.index(eos_id)] if eos_id in ids else ids, skip_special_tokens=False)

        def grade(text: str, i: int) -> tuple[str | None, bool]:
            return grade_answer(text, answers[i], self.answer_format)

        return LabelSet(prompts, prompt_attention(prompts, pad_id), None, answers, text_of, grade, truncated)


TASK = PromptSetTask
