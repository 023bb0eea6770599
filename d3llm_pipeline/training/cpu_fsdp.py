"""Lightning's FSDPStrategy on CPU processes over gloo:

    python -m d3llm_pipeline stage=distill trainer=fsdp trainer.accelerator=cpu trainer.devices=2 \
        trainer.precision=32-true

The sharded distillation path (a unit per decoder layer and per LoRA matrix, sharded AdamW, gradient clipping over
the shards, the full state gathered for checkpoints and the LoRA units for the export, resume) then runs on a
machine without GPUs, slowly: for tests and for checking a configuration before a cluster job, not for speed.
training/strategies.py builds it; tests/e2e/test_fsdp_cpu.py runs it.

Three guards stand in the way, none about correctness:
* Lightning refuses *its own* FSDP class on a CPU accelerator (it checks the exact type; a subclass passes);
* for a CPU root device Lightning hands torch's FSDP no device, which torch's FSDP1 takes as "find an
  accelerator" and refuses: this class wraps the module with device_id=cpu itself;
* Lightning gathers full state dicts with offload_to_cpu=True, which segfaults when the parameters already live
  on the CPU (torch 2.13; reproduced on a 2-layer model over 2 gloo processes, fine with offload_to_cpu=False):
  here the full state dict contexts keep the tensors in place.
Everything else (launcher, precision, checkpoint format) is Lightning's.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy

# Lightning modules that bound the full-state-dict context factory at import (save, gather, load paths)
_BOUND_IN = ("lightning.pytorch.strategies.fsdp", "lightning.fabric.strategies.fsdp",
             "lightning.fabric.strategies.model_parallel")
_FACTORY = "_get_full_state_dict_context"


def _full_state_dict_in_place(module: torch.nn.Module, world_size: int, rank0_only: bool = True):
    """Lightning's full-state-dict context, without offload_to_cpu (the parameters already live on the CPU)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


@contextlib.contextmanager
def _state_dicts_in_place() -> Iterator[None]:
    bound = []
    for name in _BOUND_IN:
        try:
            module = importlib.import_module(name)
        except ImportError:  # another Lightning release may lay its modules out differently
            continue
        if hasattr(module, _FACTORY):
            bound.append((module, getattr(module, _FACTORY)))
    for module, _ in bound:
        setattr(module, _FACTORY, _full_state_dict_in_place)
    try:
        yield
    finally:
        for module, original in bound:
            setattr(module, _FACTORY, original)


class CpuFSDPStrategy(FSDPStrategy):
    """FSDPStrategy whose processes run on the CPU (gloo); see the module docstring for what differs and why."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                             **self.kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn that it is ignored
        return super()._setup_model(model)  # sees the wrapped model: moves metrics, sets up checkpointing

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _state_dicts_in_place():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        with _state_dicts_in_place():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        with _state_dicts_in_place():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
