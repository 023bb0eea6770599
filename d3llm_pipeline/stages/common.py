"""Helpers every stage runner uses: seeding + threads, loading the task and the model with clear errors.

    threads = setup_run(cfg)
    problems = load_problems(task_cfg, "test")
    lm, tokenizer = load_model(model_cfg)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from d3llm_pipeline.config.schema import ArithTaskConfig, ConfigError, DecodeConfig, ModelConfig, load_section
from d3llm_pipeline.decoding import DecodeSpec
from d3llm_pipeline.runtime import configure_threads
from d3llm_pipeline.tasks import arith

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


def task_splits(task: ArithTaskConfig) -> dict[str, list[arith.Problem]]:
    return arith.make_splits(
        arith.ArithConfig(
            seed=task.seed, prompt_length=task.prompt_length, gen_length=task.gen_length,
            min_steps=task.min_steps, max_steps=task.max_steps, n_train=task.n_train, n_val=task.n_val,
            n_test=task.n_test,
        )
    )


def decode_spec(decode: DecodeConfig) -> DecodeSpec:
    return DecodeSpec(
        gen_length=decode.gen_length, block_size=decode.block_size, rule=decode.rule, score=decode.score,
        threshold=decode.threshold, tokens_per_step=decode.tokens_per_step, early_stop=decode.early_stop,
        block_add_threshold=decode.block_add_threshold, decoded_token_threshold=decode.decoded_token_threshold,
        accept_global_best=decode.accept_global_best, kv_cache=decode.kv_cache,
        cache_delay_iter=decode.cache_delay_iter, refresh_interval=decode.refresh_interval,
    )


def load_model(model: ModelConfig, device: str | torch.device = "cpu"):
    """(adapter, tokenizer) for the configured model, or a ConfigError that says how to create it."""
    from d3llm_pipeline.models.tiny import load_tiny_teacher

    path = Path(model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.path={path} holds no checkpoint; create it with `python -m d3llm_pipeline stage=teacher` "
            f"(or point model.path at an existing checkpoint dir)"
        )
    return load_tiny_teacher(path, dtype=model.dtype, device=device)


def check_fits(lm, task: ArithTaskConfig, decode: DecodeConfig) -> None:
    """Learned absolute positions cannot extrapolate: prompt + generation must fit the trained length."""
    if decode.gen_length != task.gen_length:
        raise ConfigError(
            f"decode.gen_length ({decode.gen_length}) must equal task.gen_length ({task.gen_length}): the task's "
            "generation region is what the model was trained on"
        )
    limit = getattr(lm.model.config, "n_positions", None)
    if limit is not None and task.prompt_length + task.gen_length > limit:
        raise ConfigError(
            f"task.prompt_length + task.gen_length = {task.prompt_length + task.gen_length} exceeds the model's "
            f"{limit} positions; lower task.gen_length or retrain the teacher"
        )


@dataclass
class DecodingRun:
    """What every stage that decodes with a model needs, validated and loaded."""

    stage: Any
    task: ArithTaskConfig
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
    """Validate the stage/task/decode/model sections, seed + threads, load the model, check it fits."""
    stage = load_section(cfg.stage, stage_schema, "stage")
    task = load_section(cfg.task, ArithTaskConfig, "task")
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    model_cfg = load_section(cfg.model, ModelConfig, "model")
    threads = setup_run(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    lm, tokenizer = load_model(model_cfg, device=device)
    check_fits(lm, task, dec)
    return DecodingRun(stage, task, dec, model_cfg, threads, device, lm, tokenizer)
