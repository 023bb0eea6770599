"""The labelling loop of stage=trajectory, with d3LLM's retries at rising temperature. What it labels (encoded
prompts, how to read and grade the teacher's answers) is the task's `LabelSet` (tasks/base.py Task.label_set), for
the embedded tasks and real prompt sets alike.

    labels = task.label_set("train", 4000, tokenizer, pad_id, eos_id, family)
    rows = label(lm, labels, range(len(labels)), sample_ids, spec, temperatures=[0.0, 0.1], batch_size=64)

Every row holds the teacher's final generation region and, per position, the forward that revealed it
(`unmask_step`), the grade, the forwards and the attempt used. Decoding is deterministic (temperature noise is keyed
by sample id), so sharding and resuming never change a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.tasks.base import LabelSet


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
