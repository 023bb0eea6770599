"""Helpers every stage runner uses: seeding + threads, loading the task and the model with clear errors.

    threads = setup_run(cfg)
    job = prepare_decoding_run(cfg, EvalStageConfig)     # the sections validated, the model checked and loaded
    lm, tokenizer = load_model(model_cfg)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from d3llm_pipeline.config.schema import DecodeConfig, ModelConfig, load_section, load_task
from d3llm_pipeline.decoding import DecodeSpec
from d3llm_pipeline.decoding.spec import spec_from
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.runtime import configure_threads, resolve_device
from d3llm_pipeline.tasks.base import Task

log = logging.getLogger(__name__)


def setup_run(cfg: DictConfig) -> int:
    """Seed everything and choose the thread count; returns the threads used."""
    torch.manual_seed(int(cfg.seed))
    threads = configure_threads(cfg.get("threads", "auto"))
    log.info("torch threads: %d (threads=%s)", threads, cfg.get("threads", "auto"))
    return threads


def decode_spec(decode: DecodeConfig) -> DecodeSpec:
    """The decoder's knobs from the decode config (decoding.spec.spec_from: every field the two share)."""
    return spec_from(decode)


def load_model(model: ModelConfig, device: str | torch.device = "cpu"):
    """(adapter, tokenizer) for the configured model, or a PipelineError naming the file and how to create it."""
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.stages.checks import model_cmd

    # The family checks the dir and loads it (tiny: the checks in stages/checks.py; llada / dream: model_type,
    # safetensors headers, memory, then a native lazy load); every failure is one line naming the file.
    return get_family(model.family).load_checked(
        model.path, "model.path", model_cmd(model.path), dtype=model.dtype, device=device,
        attn_implementation=model.attn_implementation, backend=model.backend)


def check_model(model: ModelConfig, task: Task) -> None:
    """model.path holds a sane checkpoint whose positions fit the task, checked before anything is loaded."""
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.stages.checks import model_cmd

    family = get_family(model.family)  # tiny: stages/checks.require_checkpoint; llada / dream: their own checks
    _, config = family.check(model.path, "model.path", model_cmd(model.path), backend=model.backend)
    task.check_fits(family.max_positions(config))  # learned absolute positions cannot extrapolate


@dataclass
class DecodingRun:
    """What every stage that decodes with a model needs, validated and loaded."""

    stage: Any
    task: Task
    decode: DecodeConfig
    model_cfg: ModelConfig
    threads: int
    device: torch.device
    lm: Any
    tokenizer: Any

    @property
    def spec(self) -> DecodeSpec:
        return decode_spec(self.decode)


def prepare_decoding_run(cfg: DictConfig, stage_schema: type) -> DecodingRun:
    """Validate the stage/task/decode/model sections, check the model fits, seed + threads, load the model."""
    stage = load_section(cfg.stage, stage_schema, "stage")
    task = load_task(cfg.task)
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    model_cfg = load_section(cfg.model, ModelConfig, "model")
    check_model(model_cfg, task)
    threads = setup_run(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    lm, tokenizer = load_model(model_cfg, device=device)
    if tokenizer is None:  # real-family dirs may ship none (the official-format test fixtures do not)
        raise ConfigError(f"model.path={model_cfg.path} holds no tokenizer, which stage={cfg.stage.name} needs to "
                          "encode the task; add the checkpoint's tokenizer files to that dir")
    return DecodingRun(stage, task, dec, model_cfg, threads, device, lm, tokenizer)
