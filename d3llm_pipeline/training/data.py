"""LightningDataModule over a task's graded splits (the embedded tasks): (prompt_ids, response_ids) tensor pairs.

Training batches are *step-indexed* (training/step_indexed.py): the batch of micro-batch m (= optimiser step x
trainer.accumulate_grad_batches + its place in the step) is a pure function of (seed, m), so a resumed run starts
where it stopped instead of at its epoch's first batch. `batch_size` is per device, as it always was: with W devices
a step takes W x batch_size rows, rank k the k-th share; each epoch is a fresh permutation, its leftover rows
dropped. No loader draws from the global RNG (a DataLoader draws a base seed from its generator each time it is
iterated), so validation cadence changes nothing training reads.

    dm = TaskDataModule(task, tokenizer, batch_size=32, seed=0, val_problems=200, max_steps=4800)   # tasks/base.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from d3llm_pipeline.tasks.base import Task
from d3llm_pipeline.training.step_indexed import StepBatches, data_shard


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, tokenizer, batch_size: int, seed: int, val_problems: int,
                 max_steps: int) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.n_val = val_problems
        self.max_steps = max_steps

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)  # the loader's base seed: never the global RNG's

    def train_dataloader(self) -> DataLoader:
        prompts, responses = self.task.encode(self.task.problems("train"), self.tokenizer)  # (N, P), (N, G)
        rank, world = data_shard(self.trainer)
        accumulate = self.trainer.accumulate_grad_batches if self.trainer else 1
        start = self.trainer.global_step * accumulate if self.trainer else 0  # restored before loaders are built
        per_device = "" if world == 1 else f" ({self.batch_size} per device x {world} devices)"
        batches = StepBatches((prompts, responses), self.batch_size * world, self.seed, start,
                              self.max_steps * accumulate, rank, world,
                              too_few=f"training problems{per_device}; lower stage.batch_size or raise task.n_train")
        return DataLoader(batches, batch_size=None, generator=self._generator())

    def val_dataloader(self) -> DataLoader:
        prompts, responses = self.task.encode(self.task.problems("validation")[: self.n_val], self.tokenizer)
        return DataLoader(TensorDataset(prompts, responses), batch_size=self.batch_size, shuffle=False,
                          generator=self._generator())
