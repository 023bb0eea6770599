"""stage=eval: decode a split of the task, grade it, and write metrics.json + generations.jsonl.

    python -m d3llm_pipeline stage=eval decode=vanilla
    python -m d3llm_pipeline -m stage=eval decode=threshold decode.threshold=0.1,0.3,0.6,1.0,1.5

TPF follows d3LLM: tokens before the first EOS (EOS and what follows are not counted), summed over samples,
divided by forward passes summed over samples (forwards spent after the EOS do count).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from d3llm_pipeline import artifacts
from d3llm_pipeline.config.stage_schemas import EvalStageConfig
from d3llm_pipeline.decoding import DecodeSpec, decode, tokens_per_forward
from d3llm_pipeline.runtime import atomic_write_json, atomic_write_text, provenance
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.common import prepare_decoding_run, task_splits
from d3llm_pipeline.tasks import arith

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_problems(
    lm, tokenizer, problems: list[arith.Problem], spec: DecodeSpec, prompt_length: int, batch_size: int,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode and grade `problems`; returns per-sample records and the summary numbers."""
    prompts, _ = arith.encode(problems, tokenizer, prompt_length, spec.gen_length)
    device = next(lm.parameters()).device
    records: list[dict[str, Any]] = []
    nfe_all, tokens_all, forwarded_all = [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(problems), desc="decode", unit="prob", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(problems), batch_size):
        batch = prompts[lo : lo + batch_size].to(device)
        result = decode(lm, batch, spec)
        gen = result.sequences[:, prompt_length:].cpu()
        nfe_b, tokens_b = result.nfe.cpu(), result.tokens.cpu()  # one device->host copy per batch
        nfe_all.append(nfe_b)
        tokens_all.append(tokens_b)
        if result.forwarded is not None:
            forwarded_all.append(result.forwarded.cpu())
        for i, problem in enumerate(problems[lo : lo + batch_size]):
            text = arith.decode_response(gen[i], tokenizer)
            records.append({
                "prompt": problem.prompt, "output": text, "reference": problem.response,
                "answer": problem.answer, "predicted": arith.extract_answer(text),
                "correct": arith.grade(text, problem.answer), "chain_correct": arith.chain_correct(text),
                "nfe": int(nfe_b[i]), "tokens": int(tokens_b[i]),
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
        "chain_accuracy": sum(r["chain_correct"] for r in records) / n,
        "total_nfe": int(nfe.sum()),
        "total_tokens": int(tokens.sum()),
        "mean_nfe": float(nfe.float().mean()),
        "tpf": tokens_per_forward(tokens, nfe),
        # positions run through the model per sample forward (the KV cache shortens them; d3llm decoders only)
        "positions_per_forward": float(torch.cat(forwarded_all).sum()) / float(nfe.sum()) if forwarded_all else None,
        "wall_s": round(wall, 3),
        "tokens_per_s": float(tokens.sum()) / wall if wall > 0 else None,
    }
    return records, summary


def run(cfg: DictConfig) -> dict[str, Any]:
    job = prepare_decoding_run(cfg, EvalStageConfig)
    stage, task, dec, model_cfg, spec = job.stage, job.task, job.decode, job.model_cfg, job.spec
    out_dir = Path(output_dir_of(cfg))
    problems = task_splits(task)[stage.split]
    if stage.limit is not None:
        problems = problems[: stage.limit]
    log.info("eval: %d %s problems, model=%s, decode=%s", len(problems), stage.split, model_cfg.name, asdict(spec))

    records, summary = evaluate_problems(job.lm, job.tokenizer, problems, spec, task.prompt_length, dec.batch_size)
    metrics = {
        "stage": "eval",
        "model": {"name": model_cfg.name, "family": model_cfg.family, "path": model_cfg.path,
                  "fingerprint": artifacts.model_fingerprint(model_cfg.path)},
        "decoder": {"name": dec.name, **asdict(spec), "batch_size": dec.batch_size},
        "task": {"name": task.name, "split": stage.split, "seed": task.seed},
        "device": str(job.device),
        **summary,
        "tpf_definition": "sum(tokens before first EOS) / sum(forward passes), over samples (d3LLM)",
        **provenance(job.threads),
    }
    atomic_write_text(out_dir / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(out_dir / "metrics.json", metrics)
    _log_to_wandb(cfg, metrics)
    log.info("eval: accuracy %.4f, TPF %.3f, %d forwards, %.1f tokens/s -> %s",
             summary["accuracy"], summary["tpf"], summary["total_nfe"], summary["tokens_per_s"] or 0, out_dir)
    return metrics


def _log_to_wandb(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    if cfg.logger.name != "wandb":
        return
    from d3llm_pipeline.training.loggers import init_wandb_run

    run = init_wandb_run(cfg, job_type="eval")
    run.log({f"eval/{k}": metrics[k] for k in ("accuracy", "chain_accuracy", "tpf", "total_nfe", "tokens_per_s")})
    run.summary.update({f"eval/{k}": metrics[k] for k in ("accuracy", "tpf")})
