"""stage=eval: decode a split of the task, grade it, and write metrics.json + generations.jsonl.

    python -m d3llm_pipeline stage=eval decode=vanilla
    python -m d3llm_pipeline -m stage=eval decode=threshold decode.threshold=0.1,0.3,0.6,1.0,1.5
    python -m d3llm_pipeline stage=eval model=d3llm_llada task=gsm8k_cot decode=d3llm   # a benchmark, via lm-eval

The task's EVALUATION engine (tasks/base.py) scores it: "in_house" (the embedded tasks: decoded and graded here,
evaluation.py) or "lm_eval" (a benchmark: lm-eval runs it with our decoders, stages/benchmark_eval.py). Both
write the same files.

TPF follows d3LLM: tokens before the first EOS (EOS and what follows are not counted), summed over samples,
divided by forward passes summed over samples (forwards spent after the EOS do count).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline import artifacts
from d3llm_pipeline.config.schema import load_task
from d3llm_pipeline.config.stage_schemas import EvalStageConfig
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.evaluation import evaluate_problems
from d3llm_pipeline.fileio import atomic_write_json, atomic_write_text
from d3llm_pipeline.runtime import provenance
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.common import prepare_decoding_run

log = logging.getLogger(__name__)


def _in_house_precheck(task, family: str) -> None:
    """Nothing to check before the model loads: the task's splits are generated."""


def _in_house(job, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """stage=eval's engine "in_house": decode the task's `stage.split` with our decoders and grade it here."""
    task, stage = job.task, job.stage
    problems = task.problems(stage.split)
    if stage.limit is not None:
        problems = problems[: stage.limit]
    log.info("eval: %d %s problems, model=%s, decode=%s", len(problems), stage.split, job.model_cfg.name,
             asdict(job.spec))
    records, summary = evaluate_problems(job.lm, job.tokenizer, problems, job.spec, task, job.decode.batch_size)
    return records, summary, {"name": task.name, "split": stage.split, "seed": task.seed}


def _engine(task) -> tuple:
    """(precheck, evaluate) of the task's EVALUATION engine (tasks/base.py)."""
    if task.EVALUATION == "lm_eval":
        from d3llm_pipeline.stages import benchmark_eval

        return benchmark_eval.precheck, benchmark_eval.evaluate
    if task.EVALUATION == "in_house":
        return _in_house_precheck, _in_house
    raise ConfigError(f"task={task.name} is not evaluated by stage=eval")


def run(cfg: DictConfig) -> dict[str, Any]:
    task = load_task(cfg.task)
    precheck, evaluate = _engine(task)
    precheck(task, str(cfg.model.family))  # data, few-shot split, code opt-in: before the model loads
    job = prepare_decoding_run(cfg, EvalStageConfig)
    dec, model_cfg, spec = job.decode, job.model_cfg, job.spec
    out_dir = Path(output_dir_of(cfg))
    records, summary, task_info = evaluate(job, int(cfg.seed))
    model_fp = artifacts.model_fingerprint(model_cfg.path)
    metrics = {
        "stage": "eval",
        "model": {"name": model_cfg.name, "family": model_cfg.family, "path": model_cfg.path,
                  "fingerprint": model_fp},
        "decoder": {"name": dec.name, **asdict(spec), "batch_size": dec.batch_size,
                    **_rule_that_ran(spec, model_cfg.family)},
        "task": task_info,
        "request": artifacts.eval_request(cfg, model_fp),  # what these numbers depend on (stage.reuse_evals compares it)
        "device": str(job.device),
        **summary,
        "tpf_definition": "sum(tokens before first EOS / stop string) / sum(forward passes), over samples (d3LLM)",
        **provenance(job.threads),
    }
    atomic_write_text(out_dir / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(out_dir / "metrics.json", metrics)
    _log_to_wandb(cfg, metrics)
    log.info("eval: accuracy %.4f, TPF %.3f, %d forwards, %.1f tokens/s -> %s",
             summary["accuracy"], summary["tpf"], summary["total_nfe"], summary["tokens_per_s"] or 0, out_dir)
    return metrics


def _rule_that_ran(spec, family: str) -> dict[str, Any]:
    """decode.accept_global_best=null means the model family's acceptance rule: record which one ran."""
    if spec.rule != "d3llm" or spec.accept_global_best is not None:
        return {}
    from d3llm_pipeline.models.families import get_family

    return {"accept_global_best_resolved": get_family(family).decode_defaults.accept_global_best}


def _log_to_wandb(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    if cfg.logger.name != "wandb":
        return
    from d3llm_pipeline.training.loggers import init_wandb_run

    run = init_wandb_run(cfg, job_type="eval")
    keys = ("accuracy", "chain_accuracy", "tpf", "total_nfe", "tokens_per_s")
    run.log({f"eval/{k}": metrics[k] for k in keys if k in metrics}
            | {f"eval/{k}": v for k, v in (metrics.get("metrics") or {}).items()})
    run.summary.update({f"eval/{k}": metrics[k] for k in ("accuracy", "tpf")})
