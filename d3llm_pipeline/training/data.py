"""LightningDataModule over the built-in arith task: (prompt_ids, response_ids) tensor pairs.

    dm = ArithDataModule(task_cfg, tokenizer, batch_size=32, seed=0)
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from d3llm_pipeline.config.schema import ArithTaskConfig
from d3llm_pipeline.tasks import arith
from d3llm_pipeline.tasks.arith import task_splits


class ArithDataModule(L.LightningDataModule):
    def __init__(self, task: ArithTaskConfig, tokenizer, batch_size: int, seed: int, val_problems: int) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.n_val = val_problems
        self.splits: dict[str, list[arith.Problem]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = task_splits(self.task)

    def _dataset(self, problems: list[arith.Problem]) -> TensorDataset:
        prompts, responses = arith.encode(problems, self.tokenizer, self.task.prompt_length, self.task.gen_length)
        return TensorDataset(prompts, responses)

    @property
    def val_problems(self) -> list[arith.Problem]:
        self.setup()
        return self.splits["validation"][: self.n_val]

    def train_dataloader(self) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)  # reproducible data order
        return DataLoader(self._dataset(self.splits["train"]), batch_size=self.batch_size, shuffle=True,
                          drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(self.val_problems), batch_size=self.batch_size, shuffle=False)
