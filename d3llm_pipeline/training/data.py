"""LightningDataModule over a task's graded splits (the embedded tasks): (prompt_ids, response_ids) tensor pairs.

    dm = TaskDataModule(task, tokenizer, batch_size=32, seed=0, val_problems=200)    # task: tasks/base.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from d3llm_pipeline.tasks.base import Task


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, tokenizer, batch_size: int, seed: int, val_problems: int) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.n_val = val_problems

    def _dataset(self, problems: list) -> TensorDataset:
        prompts, responses = self.task.encode(problems, self.tokenizer)
        return TensorDataset(prompts, responses)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)  # reproducible data order
        return DataLoader(self._dataset(self.task.problems("train")), batch_size=self.batch_size, shuffle=True,
                          drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(self.task.problems("validation")[: self.n_val]), batch_size=self.batch_size,
                          shuffle=False)
