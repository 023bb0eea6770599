"""Distillation data: trajectory rows as tensors, served as *step-indexed* batches for exact resumption.

The batch of optimiser step s (on rank k of W) is a pure function of (seed, s) (training/step_indexed.py): epoch
e = s // steps_per_epoch picks a permutation seeded by (seed, e), and s's slice of it. A run resumed from a
checkpoint at step s therefore sees exactly the batches an uninterrupted run would (Lightning would otherwise
restart the epoch's DataLoader from its first batch).

`batch_size` is the *global* batch: with W devices (DDP / FSDP) each rank takes its 1/W share of the step's rows
(rank k: rows [k B/W, (k+1) B/W) of the slice), so steps per epoch, the schedules built on them and the rows of
every step do not depend on W, and a run resumes on another number of devices where it stopped. B must be a
multiple of W.

    data = DistillDataModule(trajectory_dir, batch_size=32, seed=0, targets="teacher", only_correct=True)
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from d3llm_pipeline.errors import ConfigError, PipelineError, first_line
from d3llm_pipeline.tasks.prompt_sets import prompt_attention
from d3llm_pipeline.training.step_indexed import StepBatches
from d3llm_pipeline.trajectories.store import load_trajectories, trajectories_fix

log = logging.getLogger(__name__)


def load_distill_tensors(trajectory_dir: str, targets: str, only_correct: bool) -> dict[str, torch.Tensor]:
    """prompt_ids (N, P), targets (N, G), unmask_step (N, G) from a trajectory dataset."""
    try:
        ds = load_trajectories(trajectory_dir)
    except PipelineError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets / pyarrow errors here all mean unreadable files
        raise PipelineError(f"cannot read the trajectories in stage.trajectories={trajectory_dir}: "
                            f"{type(err).__name__}: {first_line(err)}; {trajectories_fix(trajectory_dir)}") from err
    if only_correct:
        ds = ds.filter(lambda ok: ok, input_columns="is_correct")
    if len(ds) == 0:
        raise ConfigError(f"no usable trajectories in {trajectory_dir} (distill.only_correct={only_correct}); "
                          "label more prompts with stage=trajectory or set distill.only_correct=false")
    column = "response_ids" if targets == "teacher" else "reference_ids"
    rows = ds.with_format("torch", columns=["prompt_ids", column, "unmask_step"])[:]  # dict of stacked tensors
    tensors = {"prompt_ids": rows["prompt_ids"].long(), "targets": rows[column].long(),
               "unmask_step": rows["unmask_step"].long()}
    if tensors["targets"].shape != tensors["unmask_step"].shape:
        raise ConfigError(f"distill.targets={targets}: targets {tuple(tensors['targets'].shape)} do not match the "
                          f"trajectories {tuple(tensors['unmask_step'].shape)} (reference responses missing?)")
    return tensors


class DistillDataModule(L.LightningDataModule):
    def __init__(self, trajectory_dir: str, batch_size: int, seed: int, targets: str, only_correct: bool,
                 epochs: int, pad_id: int | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id  # left-padded prompts (real prompt sets) get a `prompt_attention` column
        self.trajectory_dir, self.batch_size, self.seed = trajectory_dir, batch_size, seed
        self.targets, self.only_correct, self.epochs = targets, only_correct, epochs
        self.tensors: dict[str, torch.Tensor] | None = None

    def prepare(self, world_size: int = 1) -> int:
        """Load the data; returns steps per epoch (for the schedules)."""
        if self.tensors is None:
            self.tensors = load_distill_tensors(self.trajectory_dir, self.targets, self.only_correct)
            # computed once here, not per training step (it reads the data on the host)
            attention = None if self.pad_id is None else prompt_attention(self.tensors["prompt_ids"], self.pad_id)
            if attention is not None:
                self.tensors["prompt_attention"] = attention  # (N, P) bool: False on each row's left padding
            log.info("distill data: %d trajectories from %s", len(self.tensors["targets"]), self.trajectory_dir)
        return StepBatches(self.tensors, self.batch_size, self.seed, 0, 1, 0, world_size).steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        steps_per_epoch = self.prepare(world)
        start = self.trainer.global_step if self.trainer else 0  # restored before dataloaders are built
        dataset = StepBatches(self.tensors, self.batch_size, self.seed, start, self.epochs * steps_per_epoch,
                              rank, world)
        return DataLoader(dataset, batch_size=None)
