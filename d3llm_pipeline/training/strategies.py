"""Lightning FSDP for LoRA distillation: one FSDP unit per decoder layer, one dtype per unit, full weights to export.

`trainer=fsdp` (conf/trainer/fsdp.yaml) sets `strategy: fsdp` and `fsdp_wrap: layer`. A config string can only
select Lightning's registered FSDP defaults, which wrap nothing: the whole model is one unit, gathered whole for
every forward, with a whole-model gradient (41.5 vs 6.8 GiB per GPU estimated for LLaDA-8B on 8 GPUs,
models/memory.py). So the stage builds the strategy object itself, from the model it trains (`layer_units`: one
unit per decoder layer and one per LoRA matrix):

    kwargs = trainer_kwargs(cfg, model=student)   # training/fit.py: strategy -> FSDPStrategy(auto_wrap_policy=...)
    gather = GatherTrainedState()                 # a callback: at the end of fit, the trained tensors on rank 0
    trainer = L.Trainer(**kwargs, callbacks=[gather, ...]); trainer.fit(...)
    load_trained_weights(fresh_student, gather.state)   # rank 0, before exporting

Why the other pieces:
* FSDP (torch's FSDP1, which Lightning's FSDPStrategy uses) flattens each unit's parameters into one tensor, which
  must have one dtype. Under `layer_units` every unit is all frozen (model.dtype, bf16 for the real presets) or
  all LoRA (float32), so the teacher keeps model.dtype: 2 bytes / parameter / device count. fsdp_wrap=none's one
  unit mixes them, so there the teacher is loaded in float32 (`fsdp_teacher_dtype`). Lightning's FSDP mixed
  precision gathers and computes in the precision's dtype either way (bf16 for bf16-mixed, float32 for 32-true).
* After a sharded fit each rank's module holds only its shard of every parameter (use_orig_params views), so the
  student is exported from the LoRA tensors gathered over the ranks (their units alone, one at a time; the full
  state dict for fsdp_wrap=none), loaded into a fresh unsharded student. The gathering is a collective, done in
  `on_train_end` while the strategy is still set up (before Lightning's teardown), on every rank.
* Lightning's FSDP precision refuses norm clipping (stage.grad_clip): DistillModule clips through the FSDP root,
  by the norm of the full gradient over every rank's shards.

On CPU (trainer.accelerator=cpu) the same strategy runs over gloo processes (training/cpu_fsdp.py): tests train 2
sharded processes against 1 unsharded one and resume across plain and FSDP checkpoints (tests/e2e/test_fsdp_cpu.py).
Not run on GPUs yet. FSDP over one device is refused (config/validate.py): nothing to shard, and torch's FSDP1 then
runs unsharded, which breaks on tied embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

from d3llm_pipeline.config.validate import FSDP_WRAP_KEY, FSDP_WRAPS
from d3llm_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

WRAP_KEY = FSDP_WRAP_KEY  # ours, not a lightning.Trainer argument: trainer_kwargs removes it


def is_fsdp(strategy: Any) -> bool:
    """True for Lightning's FSDP strategy names ("fsdp", "fsdp_cpu_offload", ...) and FSDPStrategy objects."""
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    return isinstance(strategy, FSDPStrategy)


def decoder_layer_classes(model: torch.nn.Module) -> set[type[torch.nn.Module]]:
    """The classes of the model's repeated decoder layers: those transformers marks as never to be split
    (`_no_split_modules`: LlamaDecoderLayer, Qwen2DecoderLayer, GPT2Block, ...), found inside PEFT wrappers too."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    classes = {type(module) for module in model.modules() if type(module).__name__ in names}
    if not classes:
        raise ConfigError(f"trainer.fsdp_wrap=layer: {type(model).__name__} names no decoder-layer class "
                          "(transformers' _no_split_modules), so there is nothing to wrap one unit at a time; set "
                          "trainer.fsdp_wrap=none (the whole model as one FSDP unit, gathered for every forward)")
    return classes


def owns_only_trainable(module: torch.nn.Module) -> bool:
    """True for a module whose own parameters (not its children's) exist and all train: a LoRA matrix."""
    own = list(module.parameters(recurse=False))
    return bool(own) and all(param.requires_grad for param in own)


def layer_units(model: torch.nn.Module):
    """The FSDP wrap policy of trainer.fsdp_wrap=layer: one unit per decoder layer, holding its frozen weights, and
    one per trainable matrix inside it (each LoRA A / B).

    Why the LoRA units: FSDP1 gives a unit one flat parameter and, if any part of it trains, a gradient the size of
    the whole unit, reduce-scattered every step. LoRA matrices inside their layer's unit would cost a full-model
    gradient (float32 shards: 3.7 GiB per GPU for LLaDA-8B on 8) and a full-model reduce-scatter per step, as full
    fine-tuning does. Apart, the layer units are frozen (no gradient at all) and only the adapters' gradients
    travel. The price is more, smaller collectives (2 per LoRA matrix per step)."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    classes = tuple(decoder_layer_classes(model))
    log.info("FSDP: one unit per %s and per trainable matrix", ", ".join(sorted(c.__name__ for c in classes)))
    return CustomPolicy(lambda module: isinstance(module, classes) or owns_only_trainable(module))


def fsdp_strategy(model: torch.nn.Module, name: str, wrap: str, accelerator: str = "gpu"):
    """The FSDP strategy for `model`: `name` as given (Lightning's defaults) for wrap=none on GPUs, else an
    FSDPStrategy with one unit per decoder layer (Lightning keeps use_orig_params=True, which frozen + LoRA units
    need). accelerator=cpu: the same strategy on CPU processes over gloo (CpuFSDPStrategy), to run and test the
    sharded path without GPUs."""
    if wrap not in FSDP_WRAPS:
        raise ConfigError(f"trainer.fsdp_wrap must be one of {', '.join(FSDP_WRAPS)}, got {wrap!r}")
    on_cpu = accelerator == "cpu"
    if wrap == "none" and not on_cpu:
        return name
    if name not in ("fsdp", "fsdp_cpu_offload") or (on_cpu and name != "fsdp"):
        raise ConfigError(f"trainer.strategy={name} with trainer.fsdp_wrap={wrap} and trainer.accelerator="
                          f"{accelerator}: the strategy built here is Lightning's FSDPStrategy, whose names are fsdp "
                          "and fsdp_cpu_offload (GPUs only); set trainer.strategy=fsdp, or trainer.fsdp_wrap=none on "
                          "GPUs to pass the name through unchanged")
    policy = layer_units(model) if wrap == "layer" else None
    if on_cpu:
        from d3llm_pipeline.training.cpu_fsdp import CpuFSDPStrategy

        log.info("FSDP on CPU processes (gloo): the sharded path for testing and understanding, not for speed")
        return CpuFSDPStrategy(auto_wrap_policy=policy)
    return FSDPStrategy(auto_wrap_policy=policy, cpu_offload=name == "fsdp_cpu_offload")


def fsdp_teacher_dtype(dtype: str, strategy: Any, wrap: str) -> str:
    """The dtype to load the frozen teacher in: `dtype` (model.dtype), except float32 under FSDP with
    fsdp_wrap=none, whose one unit flattens the frozen weights and the float32 LoRA matrices into one tensor of one
    dtype. (With fsdp_wrap=layer the LoRA matrices have units of their own: every unit has one dtype already.)"""
    if is_fsdp(strategy) and wrap == "none" and dtype != "float32":
        log.info("trainer.strategy=%s trainer.fsdp_wrap=none: the teacher is loaded in float32, not model.dtype=%s "
                 "(the one FSDP unit flattens the frozen weights and the float32 LoRA matrices into one tensor of "
                 "one dtype); trainer.fsdp_wrap=layer keeps model.dtype, half the shard memory", strategy, dtype)
        return "float32"
    return dtype


FSDP_PREFIX = "_fsdp_wrapped_module."  # what FSDP1 inserts into the names of the modules it wraps


class GatherTrainedState(Callback):
    """At the end of fit, keep the trainable (LoRA) tensors of the LightningModule, under their state-dict names, in
    `self.state` on rank 0 (the other ranks keep nothing under FSDP).

    Under FSDP with `layer_units` each LoRA matrix is a unit of its own: those units alone are gathered, one at a
    time (a collective every rank runs in the same order), never the frozen teacher. Otherwise (fsdp_wrap=none,
    DDP, one device) the trainable entries of the strategy's full state dict are kept."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = trainer.strategy.model
        units = [(name, unit) for name, unit in root.named_modules() if isinstance(unit, FSDP)
                 and unit is not root and owns_only_trainable(unit.module)]
        if not units:
            state = trainer.strategy.lightning_module_state_dict()
            trainable = {name for name, param in pl_module.named_parameters() if param.requires_grad}
            # FSDP wrappers may prefix the live parameter names; the full state dict uses the clean ones
            clean = {name.replace(FSDP_PREFIX, "") for name in trainable}
            self.state = {key: value.detach().cpu() for key, value in state.items() if key in clean}
            return
        self.state = {}
        for name, unit in units:
            with FSDP.summon_full_params(unit, recurse=False, writeback=False, rank0_only=True):
                if trainer.is_global_zero:
                    for param_name, param in unit.module.named_parameters(recurse=False):
                        key = f"{name}.{param_name}".replace(FSDP_PREFIX, "")
                        self.state[key] = param.detach().cpu().clone()
        if trainer.is_global_zero:
            log.info("FSDP: gathered the %d trained tensors from their %d units (the frozen teacher stays sharded)",
                     len(self.state), len(units))


def load_trained_weights(student: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "student."
                         ) -> int:
    """Copy the trainable (LoRA) tensors of a LightningModule state dict (keys `prefix` + the student's names)
    into `student`; returns how many. Every trainable parameter must be present with its shape."""
    trainable = {name: param for name, param in student.named_parameters() if param.requires_grad}
    missing = sorted(name for name in trainable if prefix + name not in state)
    if missing:
        raise RuntimeError(f"the gathered state lacks {len(missing)} trained tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, param in trainable.items():
            value = state[prefix + name]
            if value.shape != param.shape:
                raise RuntimeError(f"gathered {name} has shape {tuple(value.shape)}, the student {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))
    return len(trainable)
