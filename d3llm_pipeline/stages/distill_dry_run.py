"""`stage=distill stage.dry_run=true`: the memory per device the configured distillation would need, from the
teacher's architecture alone (no weights, no trajectories, no GPU), then exit.

    python -m d3llm_pipeline stage=distill model=llada_8b_instruct distill=llada trainer=fsdp stage.dry_run=true

Reads what the run would use: the teacher's config.json (or the preset's published shape when stage.teacher_path
is a Hub id not downloaded), distill.lora (r, target modules), the trainer (accelerator, strategy, devices x nodes,
trainer.fsdp_wrap), stage.batch_size (global: / devices per device), the task's prompt and generation lengths,
stage.gradient_checkpointing and distill.loss.complementary. The arithmetic is models/memory.py's; it prints the
estimate and writes it to the job's metrics.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import DistillConfig
from d3llm_pipeline.config.stage_schemas import DistillStageConfig
from d3llm_pipeline.config.validate import fsdp_wrap_of
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.models.memory import estimate, teacher_shape
from d3llm_pipeline.runtime import output_dir_of
from d3llm_pipeline.training.strategies import is_fsdp

log = logging.getLogger(__name__)


def memory_strategy(trainer: DictConfig, world: int) -> str:
    """models/memory.py's strategy for a trainer config: cpu, fsdp, ddp (several devices) or gpu."""
    if trainer.get("accelerator", "auto") == "cpu":
        return "cpu"
    if is_fsdp(trainer.get("strategy")):
        return "fsdp"
    return "ddp" if world > 1 else "gpu"


def dry_run(cfg: DictConfig, stage: DistillStageConfig, distill: DistillConfig, task: Any, world: int
            ) -> dict[str, Any]:
    from d3llm_pipeline.models.families import family_of, get_family

    family = family_of(stage.teacher_path) or get_family(str(cfg.model.family))
    targets = tuple(family.lora_targets_for(distill.lora.target_modules))  # what make_student adapts
    shape = teacher_shape(stage.teacher_path, str(cfg.model.name), distill.lora.r, targets)
    strategy = memory_strategy(cfg.trainer, world)
    inputs = {"strategy": strategy, "devices": world, "batch_per_device": max(1, stage.batch_size // world),
              "prompt": int(getattr(task, "prompt_length", 0)), "gen": int(task.gen_length),
              "dtype": str(cfg.model.dtype), "checkpointing": stage.gradient_checkpointing,
              "complementary": distill.loss.complementary, "fsdp_wrap": fsdp_wrap_of(cfg.trainer),
              "lora_r": distill.lora.r}
    est = estimate(shape, distill.lora.r, strategy, world, inputs["batch_per_device"], inputs["prompt"],
                   inputs["gen"], inputs["dtype"], inputs["checkpointing"], inputs["complementary"],
                   inputs["fsdp_wrap"])
    gib = est.gib()
    log.info("distill dry run: %s, %.2f B parameters, LoRA r=%d on %s (%.1f M); %s on %d device(s), %d rows x "
             "(%d + %d) tokens per device, checkpointing %s", cfg.model.name, shape.params / 1e9, distill.lora.r,
             ", ".join(targets), shape.lora_params / 1e6, strategy, world, inputs["batch_per_device"],
             inputs["prompt"], inputs["gen"], inputs["checkpointing"])
    log.info("distill dry run: per device %.2f GiB = weights %.2f + LoRA/optimizer %.2f + activations %.2f + "
             "logits %.2f + gathered %.2f (an estimate: CUDA context, fragmentation and NCCL buffers not counted)",
             gib["total"], gib["weights"], gib["lora_states"], gib["activations"], gib["logits"], gib["gathered"])
    summary = {"stage": "distill", "dry_run": True, "model": str(cfg.model.name), "teacher": stage.teacher_path,
               "parameters": shape.params, "lora_parameters": shape.lora_params, "inputs": inputs,
               "per_device_gib": gib, "per_device_bytes": est.total}
    atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
    return summary
