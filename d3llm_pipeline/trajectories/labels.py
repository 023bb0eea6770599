"""What stage=trajectory labels: encoded prompts plus how to read and grade the teacher's answers, for the embedded
task and for real prompt sets alike, and the labelling loop with d3LLM's retries at rising temperature.

    labels = arith_labels(problems, tokenizer, prompt_length=24, gen_length=64)
    labels = prompt_set_labels(rows, task, tokenizer, pad_id, eos_id, chat_template=False)
    rows = label(lm, labels, range(len(labels)), sample_ids, spec, temperatures=[0.0, 0.1], batch_size=64)

Every row holds the teacher's final generation region and, per position, the forward that revealed it
(`unmask_step`), the grade, the forwards and the attempt used. Decoding is deterministic (temperature noise is keyed
by sample id), so sharding and resuming never change a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.tasks import arith
from d3llm_pipeline.tasks.prompt_sets import encode_prompts, grade_answer, prompt_attention


@dataclass
class LabelSet:
    prompts: torch.Tensor  # (N, P) fixed width
    attention: torch.Tensor | None  # (N, P) bool: False on left padding; None = attend everywhere
    references: torch.Tensor | None  # (N, G) the dataset's reference responses, when it has token-level ones
    answers: list[str]  # ground truth per row, as stored
    text_of: Callable[[torch.Tensor], str]  # generation region ids (G,) -> the answer text
    grade: Callable[[str, int], tuple[str | None, bool]]  # (text, row) -> (extracted answer, correct)
    truncated: int = 0  # prompts cut to fit the width

    def __len__(self) -> int:
        return len(self.answers)


def arith_labels(problems: Sequence[arith.Problem], tokenizer, prompt_length: int, gen_length: int) -> LabelSet:
    prompts, references = arith.encode(problems, tokenizer, prompt_length, gen_length)

    def grade(text: str, i: int) -> tuple[str | None, bool]:
        problem = problems[i]
        if len(problem.answers) > 1:  # arith_long: every sub-answer, space-separated
            from d3llm_pipeline.tasks.arith_long import extract_answers

            predicted = " ".join("?" if a is None else str(a) for a in extract_answers(text)) or None
            return predicted, arith.grade_problem(text, problem)
        answer = arith.extract_answer(text)
        return (None if answer is None else str(answer)), answer == problem.answer

    answers = [" ".join(map(str, p.answers)) if len(p.answers) > 1 else str(p.answer) for p in problems]
    return LabelSet(prompts, None, references, answers, lambda ids: arith.decode_response(ids, tokenizer), grade)


def prompt_set_labels(rows, task, tokenizer, pad_id: int, eos_id: int, chat_template: bool) -> LabelSet:
    """A prompt set's rows (task: config/task_schema.py PromptSetTaskConfig): left-padded prompts, answers graded
    with `task.answer_format` (tasks/prompt_sets.py)."""
    questions = [str(q) for q in rows[task.question_field]]
    answers = ["" if a is None else str(a) for a in rows[task.answer_field]]
    prompts, truncated = encode_prompts(questions, tokenizer, task.prompt_length, chat_template, pad_id)

    def text_of(ids: torch.Tensor) -> str:
        ids = ids.tolist()
        return tokenizer.decode(ids[: ids.index(eos_id)] if eos_id in ids else ids, skip_special_tokens=False)

    def grade(text: str, i: int) -> tuple[str | None, bool]:
        return grade_answer(text, answers[i], task.answer_format)

    return LabelSet(prompts, prompt_attention(prompts, pad_id), None, answers, text_of, grade, truncated)


@torch.no_grad()
def label(lm, labels: LabelSet, rows: Sequence[int], sample_ids: Sequence[int], spec: DecodeSpec,
          temperatures: Sequence[float], batch_size: int) -> list[dict[str, Any]]:
    """Decode rows `rows` of `labels`; re-decode the incorrect ones at the next temperature (d3LLM's retries).

    The last attempt is kept whether or not it is correct, with its attempt index and temperature.
    """
    device = next(lm.parameters()).device
    width = labels.prompts.shape[1]
    out: dict[int, dict[str, Any]] = {}
    todo = list(range(len(rows)))
    for attempt, temperature in enumerate(temperatures):
        attempt_spec = replace(spec, temperature=temperature)
        for lo in range(0, len(todo), batch_size):
            local = todo[lo : lo + batch_size]
            idx = [rows[j] for j in local]
            keys = torch.tensor([sample_ids[j] for j in local])
            # (B, P) prompt mask; the decoders attend to the whole generation region themselves
            attention = labels.attention[idx].long().to(device) if labels.attention is not None else None
            result = decode(lm, labels.prompts[idx].to(device), attempt_spec, attention, sample_keys=keys)
            gen, steps = result.sequences[:, width:].cpu(), result.unmask_step.cpu()
            nfe = result.nfe.cpu()
            for k, (j, i) in enumerate(zip(local, idx, strict=True)):
                text = labels.text_of(gen[k])
                predicted, correct = labels.grade(text, i)
                out[j] = {
                    "sample_id": sample_ids[j], "prompt_ids": labels.prompts[i].tolist(),
                    "response_ids": gen[k].tolist(), "unmask_step": steps[k].tolist(),
                    "reference_ids": labels.references[i].tolist() if labels.references is not None else [],
                    "nfe": int(nfe[k]), "answer": labels.answers[i], "predicted": predicted,
                    "is_correct": bool(correct), "text": text, "temperature": temperature, "attempt": attempt,
                }
        todo = [j for j in todo if not out[j]["is_correct"]]
        if not todo:
            break
    return [out[j] for j in range(len(rows))]
