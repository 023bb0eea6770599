"""Helpers every stage runner uses: seeding + threads, loading the task and the model with clear errors.

    threads = setup_run(cfg)
    problems = load_problems(task_cfg, "test")
    lm, tokenizer = load_model(model_cfg)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from d3llm_pipeline.config.schema import ArithTaskConfig, ConfigError, DecodeConfig, ModelConfig, load_section
from d3llm_pipeline.config.task_schema import BenchmarkTaskConfig, load_task
from d3llm_pipeline.decoding import DecodeSpec
from d3llm_pipeline.decoding.spec import spec_from
from d3llm_pipeline.runtime import configure_threads
from d3llm_pipeline.tasks.arith import task_splits  # noqa: F401  (re-exported for the stages)

log = logging.getLogger(__name__)


def setup_run(cfg: DictConfig) -> int:
    """Seed everything and choose the thread count; returns the threads used."""
    torch.manual_seed(int(cfg.seed))
    threads = configure_threads(cfg.get("threads", "auto"))
    log.info("torch threads: %d (threads=%s)", threads, cfg.get("threads", "auto"))
    return threads


def resolve_device(setting: str) -> torch.device:
    """`device=auto` picks CUDA when present; an explicit CUDA device on a CPU-only machine is an error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {setting!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={setting} but no CUDA device is visible; use device=cpu (or auto)")
    return device


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


def check_fits(limit: int | None, task: ArithTaskConfig | BenchmarkTaskConfig) -> None:
    """Learned absolute positions cannot extrapolate: prompt + generation must fit the model's `limit` positions.

    (A benchmark's prompts vary: only its generation region is checked here. decode.gen_length ==
    task.gen_length, a config-only rule, is checked with the rest of the config in config/validate.py.)
    """
    if limit is None:
        return
    if isinstance(task, BenchmarkTaskConfig):
        if task.gen_length >= limit:
            raise ConfigError(f"task.gen_length = {task.gen_length} leaves no room for a prompt in the model's "
                              f"{limit} positions; lower task.gen_length")
    elif task.prompt_length + task.gen_length > limit:
        raise ConfigError(
            f"task.prompt_length + task.gen_length = {task.prompt_length + task.gen_length} exceeds the model's "
            f"{limit} positions; lower task.gen_length or retrain the teacher"
        )


def check_model(model: ModelConfig, task: ArithTaskConfig | BenchmarkTaskConfig) -> None:
    """model.path holds a sane checkpoint whose positions fit the task, checked before anything is loaded."""
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.stages.checks import model_cmd

    family = get_family(model.family)  # tiny: stages/checks.require_checkpoint; llada / dream: their own checks
    _, config = family.check(model.path, "model.path", model_cmd(model.path), backend=model.backend)
    check_fits(family.max_positions(config), task)


@dataclass
class DecodingRun:
    """What every stage that decodes with a model needs, validated and loaded."""

    stage: Any
    task: ArithTaskConfig | BenchmarkTaskConfig
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
