"""What the Lightning stages (teacher, distill) share: Trainer arguments, the validation evaluator, file names.

    trainer = L.Trainer(**trainer_kwargs(cfg, model=student), max_steps=..., ...)
    callbacks += progress_bar(cfg)       # the epoch count of a max_steps run, where Lightning's bar reads "0/-2"
    evaluator = validation_evaluator(tokenizer, task, n_problems, decode_cfg)   # lm -> summary dict, or None
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from d3llm_pipeline.config.schema import DecodeConfig
from d3llm_pipeline.config.validate import TRAINER_RESERVED, fsdp_wrap_of
from d3llm_pipeline.decoding.spec import spec_from
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.evaluation import evaluate_problems
from d3llm_pipeline.tasks.base import Task
from d3llm_pipeline.training.strategies import WRAP_KEY, fsdp_strategy, is_fsdp

SUMMARY_FILE = "training_summary.json"  # written beside a published checkpoint; its presence means "finished"
# Set by the stages themselves from stage.* keys; a trainer.* value would silently fight them (config/validate.py
# rejects them before a run starts, naming the stage.* key to use instead).
RESERVED = set(TRAINER_RESERVED)


def trainer_kwargs(cfg: DictConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """`cfg.trainer` as Lightning Trainer arguments, rejecting keys the stage controls. An FSDP strategy with
    trainer.fsdp_wrap=layer becomes an FSDPStrategy wrapping each decoder layer of `model` (training/strategies.py);
    checkpoints are written by AtomicCheckpointIO (training/checkpoint_io.py)."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    clash = sorted(RESERVED & set(kwargs))
    if clash:
        raise ConfigError(f"trainer.{clash[0]} is set by stage={cfg.stage.name}; use the stage.* keys "
                          "(stage.max_steps, stage.epochs, stage.val_every)")
    wrap = fsdp_wrap_of(kwargs)
    kwargs.pop(WRAP_KEY, None)
    if is_fsdp(kwargs.get("strategy")) and model is not None:
        kwargs["strategy"] = fsdp_strategy(model, kwargs["strategy"], wrap, str(kwargs.get("accelerator", "auto")))
    # imported here: it imports Lightning, which config validation and decoding never need
    from d3llm_pipeline.training.checkpoint_io import AtomicCheckpointIO

    given = kwargs.get("plugins") or []  # trainer.plugins, if a user set any, stay
    kwargs["plugins"] = [*(given if isinstance(given, list) else [given]), AtomicCheckpointIO()]  # whole or nothing
    return kwargs


# trainer.* identity keys that only set how many processes share a step: a distillation run may resume with other
# values (stage.batch_size is the global batch, training/distill_data.py), a finished artifact still records them.
WORLD_KEYS = ("trainer.devices", "trainer.num_nodes")


def trainer_identity(cfg: DictConfig) -> dict[str, Any]:
    """The trainer.* keys that change what a training run produces (world size, precision, accumulation)."""
    keys = ("devices", "num_nodes", "precision", "accumulate_grad_batches")
    # num_nodes=1 is Lightning's default, left out so runs from before the presets named it keep their fingerprint
    return {f"trainer.{k}": cfg.trainer[k] for k in keys if k in cfg.trainer
            and not (k == "num_nodes" and cfg.trainer[k] == 1)}


try:  # Lightning's default bar is the Rich one when rich is installed (it is a dependency of ours)
    from lightning.pytorch.callbacks import RichProgressBar
except ImportError:  # pragma: no cover - its TQDM bar reads "Epoch N", which is right
    RichProgressBar = None


if RichProgressBar is not None:
    class StepBoundProgressBar(RichProgressBar):
        """Lightning's Rich bar for a run bounded by max_steps (max_epochs=-1): "Epoch 2/5", the last epoch
        counted from max_steps and the optimiser steps per epoch, where Lightning's reads "Epoch 2/-2"."""

        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            per_epoch = trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)
            if trainer.max_epochs not in (None, -1) or trainer.max_steps < 1 or not 0 < per_epoch < float("inf"):
                return super()._get_train_description(current_epoch)
            last = max(current_epoch, math.ceil(trainer.max_steps / per_epoch) - 1)
            return f"Epoch {current_epoch}/{last}"


def progress_bar(cfg: DictConfig) -> list:
    """[the bar callback] for a Lightning stage's callbacks ([] when the trainer shows no bar)."""
    if RichProgressBar is None or cfg.trainer.get("enable_progress_bar") is False:
        return []
    return [StepBoundProgressBar()]


def _evaluate(lm, tokenizer, problems, spec, task, batch_size: int) -> dict[str, Any]:
    return evaluate_problems(lm, tokenizer, problems, spec, task, batch_size, progress=False)[1]


def validation_evaluator(tokenizer, task: Task, n_problems: int, decode: DecodeConfig):
    """A picklable callable lm -> {accuracy, tpf, ...} decoding the first `n_problems` of the task's validation
    split (works under ddp_spawn); None for a task without graded splits (a prompt set: evaluate afterwards)."""
    if not task.GRADED_SPLITS:
        return None
    # never compiled here: the model is the one being trained (its grad-enabled forwards stay eager anyway)
    spec = dataclasses.replace(spec_from(decode), compile=False)
    return functools.partial(_evaluate, tokenizer=tokenizer, problems=task.problems("validation")[:n_problems],
                             spec=spec, task=task, batch_size=decode.batch_size)
