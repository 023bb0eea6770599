"""stage=distill: train a LoRA student on the teacher's pseudo-trajectories (d3LLM), write adapter + merged model.

    python -m d3llm_pipeline stage=distill                         # the embedded teacher + its trajectories
    python -m d3llm_pipeline stage=distill distill=dparallel       # certainty-forcing baseline
    python -m d3llm_pipeline stage=eval model=student              # evaluate the merged student

Outputs under `stage.out_dir` (default outputs/artifacts/student; in a multirun each job writes
`<artifacts>/students/<its overrides>/`): `adapter/` (PEFT format) and `merged/` (the teacher's own format: HF
for the tiny teacher, official LLaDA / Dream names and config.json for those, in the training dtype; loaded
exactly like the teacher, with `artifact.json` recording what shaped it: teacher, trajectories, recipe, seed).
A finished student is reused only when those match (else one line names the keys that differ). Interrupted runs
resume from `<out_dir>.lightning/last.ckpt`, after the same check, with the same curriculum values and batches
as an uninterrupted run. A multirun ends by evaluating and ranking its students (stages/student_sweep.py).
"""

from __future__ import annotations

import contextlib
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
from d3llm_pipeline.config.schema import DecodeConfig, DistillConfig, load_section, load_task
from d3llm_pipeline.config.stage_schemas import DistillStageConfig
from d3llm_pipeline.config.validate import fsdp_wrap_of
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.models.lora import make_student, save_student
from d3llm_pipeline.runtime import launcher_rank, provenance
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.checks import check_distill_io
from d3llm_pipeline.stages.common import setup_run
from d3llm_pipeline.tasks.base import Task
from d3llm_pipeline.training.curriculum import MaskRatioCurriculum, WindowCurriculum
from d3llm_pipeline.training.distill_data import DistillDataModule
from d3llm_pipeline.training.distill_module import DistillModule
from d3llm_pipeline.training.fit import (
    SUMMARY_FILE,
    WORLD_KEYS,
    progress_bar,
    trainer_identity,
    trainer_kwargs,
    validation_evaluator,
)
from d3llm_pipeline.training.loggers import make_lightning_logger
from d3llm_pipeline.training.relaunch import isolated_sweep_job
from d3llm_pipeline.training.strategies import (
    GatherTrainedState,
    fsdp_teacher_dtype,
    is_fsdp,
    load_trained_weights,
)
from d3llm_pipeline.training.threads import thread_watch
from d3llm_pipeline.trajectories.store import dataset_fingerprint

log = logging.getLogger(__name__)

# stage.* keys that shape the student (validation and checkpoint cadence do not)
RECIPE_KEYS = ("epochs", "batch_size", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip")


def student_identity(cfg: DictConfig, stage: DistillStageConfig, distill: DistillConfig) -> dict[str, Any]:
    """Every setting that shapes the student, keyed as the user types it (inputs by their own fingerprints). The
    recipe's optimisation enters as the stage.* keys it defaults (what ran, whoever set it); warmup_fraction only
    when set (it was added later: at 0, the identity students were made with)."""
    recipe = {k: v for k, v in asdict(distill).items() if k != "optim"}
    return {
        "seed": int(cfg.seed),
        "teacher (stage.teacher_path)": artifacts.model_fingerprint(stage.teacher_path),
        "trajectories (stage.trajectories)": dataset_fingerprint(stage.trajectories),
        **artifacts.flatten("distill", recipe),
        **{f"stage.{key}": getattr(stage, key) for key in RECIPE_KEYS},
        **({"stage.warmup_fraction": stage.warmup_fraction} if stage.warmup_fraction else {}),
        **trainer_identity(cfg),
    }


def _world_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.get("devices", 1)
    nodes = cfg.trainer.get("num_nodes", 1)
    return (devices if isinstance(devices, int) and devices > 0 else 1) * (nodes if isinstance(nodes, int) else 1)


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, DistillStageConfig, "stage")
    distill = load_section(cfg.distill, DistillConfig, "distill")
    task = load_task(cfg.task)
    val_decode = load_section(cfg.decode, DecodeConfig, "decode")
    if stage.dry_run:  # the memory estimate only: no weights, trajectories or GPU needed
        from d3llm_pipeline.stages.distill_dry_run import dry_run

        return dry_run(cfg, stage, distill, task, _world_size(cfg))
    threads = setup_run(cfg)
    out_dir = Path(stage.out_dir)
    check_distill_io(stage, str(cfg.model.family))  # teacher, trajectories and out_dir, before anything is loaded
    identity = student_identity(cfg, stage, distill)
    ways_out = ("retrain it there with stage.overwrite=true, or distil into another dir with "
                "paths.student_dir=<dir> (stage.out_dir=<dir>)")
    lead = launcher_rank() == 0  # a process Lightning's ddp / fsdp re-launched for another device: no artifact I/O
    if lead:  # never distil over what we did not make (the dir, or a resume dir beside it)
        ownership.check_ours(out_dir, "student", "stage.out_dir")
        ownership.check_ours(out_dir.with_name(out_dir.name + ".lightning"), "student", "stage.out_dir")
    if lead and not stage.overwrite and artifacts.reusable(out_dir / "merged", "student", identity, ways_out,
                                                           SUMMARY_FILE):
        log.info("student already distilled at %s with these settings; reusing it (stage.overwrite=true retrains)",
                 out_dir)
        return {**json.loads((out_dir / "merged" / SUMMARY_FILE).read_text()), artifacts.REUSED: True}
    with artifacts.artifact_lock(out_dir) if lead else contextlib.nullcontext():
        return _distill(cfg, stage, distill, task, val_decode, threads, out_dir, identity)


def _distill(cfg: DictConfig, stage: DistillStageConfig, distill: DistillConfig,
             task: Task, val_decode: DecodeConfig, threads: int, out_dir: Path,
             identity: dict[str, Any]) -> dict[str, Any]:
    ckpt_dir = out_dir.with_name(out_dir.name + ".lightning")
    lead = launcher_rank() == 0
    if lead and stage.overwrite:
        ownership.remove_ours(ckpt_dir, "student", "stage.out_dir")
    elif lead and stage.resume and (ckpt_dir / "last.ckpt").is_file():  # on any number of devices (WORLD_KEYS)
        artifacts.check_same(ckpt_dir, "unfinished distillation run", identity,
                             "resume it with its own settings, or start over with stage.overwrite=true",
                             ignore=WORLD_KEYS)

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # the teacher in model.dtype (bf16 presets: half the memory of fp32; the LoRA matrices stay fp32)
    strategy = cfg.trainer.get("strategy")
    # FSDP: one dtype per flattened unit (float32 when one unit mixes frozen and LoRA weights: fsdp_wrap=none)
    teacher_dtype = fsdp_teacher_dtype(str(cfg.model.dtype), strategy, fsdp_wrap_of(cfg.trainer))
    student, tokenizer = make_student(stage.teacher_path, distill.lora, dtype=teacher_dtype,
                                      gradient_checkpointing=stage.gradient_checkpointing)
    data = DistillDataModule(stage.trajectories, stage.batch_size, int(cfg.seed), distill.targets,
                             distill.only_correct, stage.epochs, pad_id=student.pad_token_id)
    steps_per_epoch = data.prepare(_world_size(cfg))
    max_steps = stage.epochs * steps_per_epoch
    evaluator = None
    if is_fsdp(strategy):  # decoding outside the FSDP root's forward would read sharded embeddings / head
        log.info("distill: trainer.strategy=%s shards the weights, so there is no validation during training; "
                 "evaluate the exported student with stage=eval model=student", strategy)
    else:  # None for a task without graded splits (a prompt set): evaluate afterwards
        evaluator = validation_evaluator(tokenizer, task, stage.val_problems, val_decode)
        if evaluator is None:
            log.info("distill: task=%s has no graded validation split; no validation during training (evaluate "
                     "the student with stage=eval task=<benchmark>)", task.name)
    module = DistillModule(student, distill, lr=stage.lr, weight_decay=stage.weight_decay,
                           warmup_steps=stage.warmup_for(max_steps), max_steps=max_steps,
                           min_lr_ratio=stage.min_lr_ratio,
                           seed=int(cfg.seed), val_every=stage.val_every, evaluator=evaluator)
    curriculum = distill.curriculum
    callbacks = [
        MaskRatioCurriculum(curriculum.mask_ratio == "linear", curriculum.r_min, curriculum.r_max, max_steps),
        WindowCurriculum(curriculum.window == "epochs", curriculum.window_sizes, curriculum.fixed_window,
                         max_steps),
        ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=stage.checkpoint_every, save_last=True, save_top_k=0),
    ]
    gather = GatherTrainedState() if is_fsdp(strategy) else None  # sharded weights: gathered to export them
    callbacks += ([gather] if gather else []) + progress_bar(cfg) + thread_watch(cfg.get("threads", "auto"))
    trainer = L.Trainer(**trainer_kwargs(cfg, model=student), max_steps=max_steps, max_epochs=-1,
                        logger=make_lightning_logger(cfg, "distill"), callbacks=callbacks, num_sanity_val_steps=0,
                        limit_val_batches=0, gradient_clip_val=stage.grad_clip, default_root_dir=output_dir_of(cfg))
    resume_from = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume_from) if stage.resume and resume_from.is_file() else None
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    log.info("distill %s: %d LoRA parameters, %d steps (%d epochs x %d), %d threads%s", distill.name, trainable,
             max_steps, stage.epochs, steps_per_epoch, threads, f", resuming {ckpt_path}" if ckpt_path else "")

    if lead:
        ownership.claim(out_dir, "student", "stage.out_dir")
        artifacts.write_identity(ckpt_dir, "student", identity)  # what the resume checkpoints belong to
    start = time.perf_counter()
    with isolated_sweep_job():  # ddp / fsdp in a Hydra multirun: extra processes re-run this job alone
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    if trainer.interrupted:  # (global_step is not carried back to the main process by spawn strategies)
        raise RuntimeError(f"distillation was interrupted before step {max_steps}; rerun to resume")
    summary = {
        "stage": "distill", "recipe": asdict(distill), "steps": max_steps, "epochs": stage.epochs,
        "steps_per_epoch": steps_per_epoch, "trajectories": len(data.tensors["targets"]), "lora_parameters": trainable,
        "wall_s": round(wall, 1), "resumed": ckpt_path is not None, "teacher": stage.teacher_path,
        "out_dir": str(out_dir), "fingerprint": artifacts.fingerprint(identity),
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, **provenance(threads),
    }
    if trainer.is_global_zero:
        trained = module.student
        if gather is not None:  # each rank holds shards only: a fresh unsharded student with the gathered LoRA
            trained, _ = make_student(stage.teacher_path, distill.lora, dtype=teacher_dtype)
            load_trained_weights(trained, gather.state, prefix="student.")
        _, merged = save_student(trained, tokenizer, out_dir)
        artifacts.write_identity(merged, "student", identity)
        atomic_write_json(merged / SUMMARY_FILE, summary)  # written last: its presence means "finished"
        atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
        ownership.remove_ours(ckpt_dir, "student", "stage.out_dir")
    log.info("distill: %d steps in %.0f s (val/accuracy %s) -> %s", max_steps, wall,
             summary["final_metrics"].get("val/accuracy"), out_dir)
    return summary
