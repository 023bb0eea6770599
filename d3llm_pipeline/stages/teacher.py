"""stage=teacher: train the embedded tiny dLLM teacher from scratch and write it as an HF checkpoint.

    python -m d3llm_pipeline stage=teacher                     # ~1,500 steps on 2 CPU cores
    python -m d3llm_pipeline stage=teacher trainer=gpu trainer.devices=2

The product is `stage.out_dir` (= `model.path`, default outputs/artifacts/teacher), which stage=eval and later
stages load; in a multirun each job writes `<artifacts>/teachers/<its overrides>/`. The checkpoint dir records
what shaped it (`artifact.json`: model, task, recipe, seed, trainer). A finished teacher is reused only when
those settings match (a mismatch stops with the keys that differ; stage.overwrite=true retrains); an
interrupted run resumes from its last Lightning checkpoint, kept beside the product in `<out_dir>.lightning/`
until training completes, after the same check, and ends with the weights the uninterrupted run would have: each
step's batch and random draws are functions of (seed, step) (training/data.py, training/teacher_module.py), which
is also why the validation cadence (stage.val_every) does not change the weights.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from d3llm_pipeline import artifacts, ownership
from d3llm_pipeline.config.schema import DecodeConfig, ModelConfig, load_section, load_task
from d3llm_pipeline.config.stage_schemas import TeacherStageConfig
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
from d3llm_pipeline.runtime import provenance
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.checks import require_writable, teacher_bytes
from d3llm_pipeline.stages.common import setup_run
from d3llm_pipeline.tasks.base import Task
from d3llm_pipeline.tasks.tokenizer import build_tokenizer
from d3llm_pipeline.training.data import TaskDataModule
from d3llm_pipeline.training.fit import (
    SUMMARY_FILE,
    progress_bar,
    trainer_identity,
    trainer_kwargs,
    validation_evaluator,
)
from d3llm_pipeline.training.loggers import make_lightning_logger
from d3llm_pipeline.training.relaunch import isolated_sweep_job
from d3llm_pipeline.training.teacher_module import DiffusionSFTModule
from d3llm_pipeline.training.threads import thread_watch

log = logging.getLogger(__name__)

# stage.* keys that shape the weights (validation and checkpoint cadence do not)
RECIPE_KEYS = ("max_steps", "batch_size", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip")


def teacher_identity(cfg: DictConfig, stage: TeacherStageConfig, task: Task,
                     model_cfg: ModelConfig) -> dict[str, Any]:
    """Every setting that shapes the trained teacher, keyed as the user types it."""
    return {
        "seed": int(cfg.seed), "model.family": model_cfg.family, "model.dtype": model_cfg.dtype,
        **artifacts.flatten("model.arch", asdict(model_cfg.arch)), **artifacts.flatten("task", task.identity()),
        **{f"stage.{key}": getattr(stage, key) for key in RECIPE_KEYS}, **trainer_identity(cfg),
    }


def _publish(module: DiffusionSFTModule, tokenizer, final: Path, summary: dict[str, Any],
             identity: dict[str, Any]) -> None:
    """Write the HF checkpoint into a temp dir, then swap it in (replacing only a teacher of ours), so model.path
    is never half-written."""
    with ownership.staged(final, "teacher", "stage.out_dir") as tmp:
        save_tiny_teacher(module.lm, tokenizer, tmp)
        artifacts.write_identity(tmp, "teacher", identity)
        atomic_write_json(tmp / SUMMARY_FILE, summary)


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, TeacherStageConfig, "stage")
    task = load_task(cfg.task)
    model_cfg = load_section(cfg.model, ModelConfig, "model")
    val_decode = load_section(cfg.decode, DecodeConfig, "decode")
    threads = setup_run(cfg)
    final = Path(stage.out_dir)
    ownership.check_ours(final, "teacher", "stage.out_dir")  # never train over what we did not make
    identity = teacher_identity(cfg, stage, task, model_cfg)
    ways_out = "retrain it there with stage.overwrite=true, or train into another dir with model.path=<dir>"
    if not stage.overwrite and artifacts.reusable(final, "teacher", identity, ways_out, SUMMARY_FILE):
        summary = json.loads((final / SUMMARY_FILE).read_text())
        log.info("teacher already trained at %s with these settings (%s steps); reusing it (stage.overwrite=true "
                 "retrains)", final, summary.get("steps"))
        return {**summary, artifacts.REUSED: True}
    require_writable(final, "stage.out_dir", need_bytes=teacher_bytes(model_cfg.arch, task))
    with artifacts.artifact_lock(final):
        return _train(cfg, stage, task, model_cfg, val_decode, threads, final, identity)


def _train(cfg: DictConfig, stage: TeacherStageConfig, task: Task, model_cfg: ModelConfig,
           val_decode: DecodeConfig, threads: int, final: Path, identity: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(output_dir_of(cfg))
    ckpt_dir = final.with_name(final.name + ".lightning")
    if stage.overwrite:
        ownership.remove_ours(ckpt_dir, "teacher", "stage.out_dir")
    elif stage.resume and (ckpt_dir / "last.ckpt").is_file():
        artifacts.check_same(ckpt_dir, "unfinished teacher run", identity,
                             "resume it with its own settings, or start over with stage.overwrite=true")

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tokenizer = build_tokenizer()
    arch = model_cfg.arch
    lm = build_tiny_teacher(tokenizer, max_positions=task.prompt_length + task.gen_length, n_embd=arch.n_embd,
                            n_layer=arch.n_layer, n_head=arch.n_head, dropout=arch.dropout, seed=int(cfg.seed),
                            init_std=arch.init_std, embed_init_std=arch.embed_init_std)
    data = TaskDataModule(task, tokenizer, stage.batch_size, int(cfg.seed), stage.val_problems, stage.max_steps)
    evaluator = validation_evaluator(tokenizer, task, stage.val_problems, val_decode)
    module = DiffusionSFTModule(lm, lr=stage.lr, weight_decay=stage.weight_decay, warmup_steps=stage.warmup_steps,
                                max_steps=stage.max_steps, min_lr_ratio=stage.min_lr_ratio, seed=int(cfg.seed),
                                evaluator=evaluator)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=stage.checkpoint_every, save_last=True,
                                 save_top_k=0)
    trainer = L.Trainer(
        **trainer_kwargs(cfg), max_steps=stage.max_steps, max_epochs=-1, logger=make_lightning_logger(cfg, "teacher"),
        callbacks=[checkpoint, *progress_bar(cfg), *thread_watch(cfg.get("threads", "auto"))],
        val_check_interval=stage.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, gradient_clip_val=stage.grad_clip, default_root_dir=str(out_dir),
    )
    resume_from = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume_from) if stage.resume and resume_from.is_file() else None
    if ckpt_path:
        log.info("resuming teacher training from %s", ckpt_path)
    n_params = sum(p.numel() for p in lm.parameters())
    log.info("teacher: %.2f M parameters, %d steps of batch %d, %d threads", n_params / 1e6, stage.max_steps,
             stage.batch_size, threads)

    ownership.check_ours(ckpt_dir, "teacher", "stage.out_dir")
    artifacts.write_identity(ckpt_dir, "teacher", identity)  # what the resume checkpoints belong to
    start = time.perf_counter()
    with isolated_sweep_job():  # ddp / fsdp in a Hydra multirun: extra processes re-run this job alone
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    if trainer.interrupted:  # (global_step is not carried back to the main process by spawn strategies)
        raise RuntimeError(f"training was interrupted before step {stage.max_steps}; rerun to resume")

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = {
        "stage": "teacher",
        "model": {"name": model_cfg.name, "path": str(final), "parameters": n_params},
        "steps": stage.max_steps,
        "batch_size": stage.batch_size,
        "wall_s": round(wall, 1),
        "resumed": ckpt_path is not None,
        "final_metrics": metrics,
        "config": {"model": asdict(model_cfg), "task": asdict(task), "stage": asdict(stage)},
        "fingerprint": artifacts.fingerprint(identity),
        **provenance(threads),
    }
    _publish(module, tokenizer, final, summary, identity)
    atomic_write_json(out_dir / "metrics.json", summary)
    ownership.remove_ours(ckpt_dir, "teacher", "stage.out_dir")  # the published checkpoint is the product
    log.info("teacher: %d steps in %.0f s (val/accuracy %s) -> %s", stage.max_steps, wall,
             metrics.get("val/accuracy"), final)
    return summary
