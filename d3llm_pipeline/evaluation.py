"""Decode a list of a task's problems with any decoder and grade them: per-sample records + summary numbers.

Shared by stage=eval (stages/evaluate.py) and the training stages' validation (training/fit.py), so neither
imports the other. The task (tasks/base.py) encodes the prompts, reads the outputs back and grades them.

    records, summary = evaluate_problems(lm, tokenizer, problems, spec, task, batch_size=64)
    summary["accuracy"], summary["tpf"]

TPF follows d3LLM: tokens before the first EOS (EOS and what follows are not counted), summed over samples,
divided by forward passes summed over samples (forwards spent after the EOS do count).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from d3llm_pipeline.decoding import DecodeSpec, decode, tokens_per_forward
from d3llm_pipeline.tasks.base import Task


@torch.no_grad()
def evaluate_problems(
    lm, tokenizer, problems: list, spec: DecodeSpec, task: Task, batch_size: int, progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode and grade `problems` (the task's own); returns per-sample records and the summary numbers."""
    prompts, _ = task.encode(problems, tokenizer)
    prompt_length = prompts.shape[1]
    device = next(lm.parameters()).device
    records: list[dict[str, Any]] = []
    nfe_all, tokens_all, forwarded_all = [], [], []
    warmup_s = compile_warmup(lm, prompts[:batch_size].to(device), spec) if len(problems) else None
    start = time.perf_counter()
    bar = tqdm(total=len(problems), desc="decode", unit="prob", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(problems), batch_size):
        batch = prompts[lo : lo + batch_size].to(device)
        # keys = problem indices: with decode.temperature > 0 each problem's noise does not depend on its batch
        result = decode(lm, batch, spec, sample_keys=torch.arange(lo, lo + len(batch)))
        gen = result.sequences[:, prompt_length:].cpu()
        nfe_b, tokens_b = result.nfe.cpu(), result.tokens.cpu()  # one device->host copy per batch
        nfe_all.append(nfe_b)
        tokens_all.append(tokens_b)
        if result.forwarded is not None:
            forwarded_all.append(result.forwarded.cpu())
        for i, problem in enumerate(problems[lo : lo + batch_size]):
            text = task.read(gen[i], tokenizer)
            graded = task.grade(text, problem)
            records.append({
                "prompt": problem.prompt, "output": text, "reference": problem.response,
                "answer": problem.answer, "predicted": graded.predicted, "correct": graded.correct,
                "chain_correct": graded.chain_correct, "nfe": int(nfe_b[i]), "tokens": int(tokens_b[i]),
            })
        bar.update(len(batch))
        bar.set_postfix(acc=f"{sum(r['correct'] for r in records) / len(records):.3f}")
    bar.close()
    wall = time.perf_counter() - start
    nfe, tokens = torch.cat(nfe_all), torch.cat(tokens_all)
    n = len(records)
    summary = {
        "n": n,
        "accuracy": sum(r["correct"] for r in records) / n,
        "chain_accuracy": sum(bool(r["chain_correct"]) for r in records) / n,
        "total_nfe": int(nfe.sum()),
        "total_tokens": int(tokens.sum()),
        "mean_nfe": float(nfe.float().mean()),
        "tpf": tokens_per_forward(tokens, nfe),
        # positions run through the model per sample forward (the KV cache shortens them; d3llm decoders only)
        "positions_per_forward": float(torch.cat(forwarded_all).sum()) / float(nfe.sum()) if forwarded_all else None,
        "wall_s": round(wall, 3),
        "tokens_per_s": float(tokens.sum()) / wall if wall > 0 else None,
    }
    if warmup_s is not None:
        summary["compile_warmup_s"] = round(warmup_s, 3)
    return records, summary


def compile_warmup(lm, prompt_ids: torch.Tensor, spec: DecodeSpec, attention_mask: torch.Tensor | None = None
                   ) -> float | None:
    """decode.compile: one untimed decode of `prompt_ids` (its output discarded), so that compiling the forward,
    which the first decode pays, is not counted in the run's wall time and tokens/s; returns its seconds. None
    (nothing run) without decode.compile."""
    if not spec.compile:
        return None
    start = time.perf_counter()
    decode(lm, prompt_ids, spec, attention_mask, sample_keys=torch.arange(len(prompt_ids)))
    return time.perf_counter() - start
