"""Step-indexed randomness for the training stages (teacher, distill): a step's batch and draws from (seed, step).

Lightning restarts a resumed run's DataLoader at the first batch of its epoch and restores no random-number state,
and a DataLoader draws its base seed from the global RNG every time it is iterated (so the validation cadence would
move any global stream). Making the batch of step s and the generator of step s pure functions of (seed, s) removes
all three: a run resumed at step s sees exactly what an uninterrupted run would, whatever ran before s.

    batches = StepBatches(tensors, batch_size=32, seed=0, start_step=trainer.global_step, max_steps=1000)
    generator = step_generator(seed, step)                    # the draws of step `step`
    rank, world = data_shard(trainer)                         # (0, 1) on one device
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import IterableDataset

from d3llm_pipeline.errors import ConfigError

# Independent streams per step (e.g. masking noise and dropout): 64 seeds are reserved for every (seed, step).
STREAMS = 64
Tensors = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """The seed of stream `stream` of step `step`: distinct for every (seed, step, stream) of runs under a million
    steps. (Stream 0 is what distillation always drew from, so its runs keep their numbers.)"""
    if not 0 <= stream < STREAMS:
        raise ValueError(f"stream must be in [0, {STREAMS}), got {stream}")
    return (seed * 1_000_003 + step) * STREAMS + stream


def step_generator(seed: int, step: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for stream `stream` of step `step` (on `device`: its numbers are that device's)."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step, stream))


def data_shard(trainer) -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a Trainer."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def _rows(tensors: Tensors) -> int:
    first = next(iter(tensors.values())) if isinstance(tensors, Mapping) else tensors[0]
    return len(first)


class StepBatches(IterableDataset):
    """Yields one rank's share of the batches of steps start_step, ..., max_steps - 1 (batch_size: global).

    `tensors` is a dict of (N, ...) tensors (batches are dicts) or a tuple of them (batches are tuples). Epoch
    e = step // steps_per_epoch takes a permutation seeded by (seed, e) and step's slice of it (drop_last: the
    N mod batch_size rows left over are not used that epoch); rank k of W takes rows [k B/W, (k+1) B/W) of it.
    """

    def __init__(self, tensors: Tensors, batch_size: int, seed: int, start_step: int, max_steps: int,
                 rank: int = 0, world_size: int = 1,
                 too_few: str = "training trajectories; lower stage.batch_size or label more prompts") -> None:
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.start_step, self.max_steps, self.rank, self.world = start_step, max_steps, rank, world_size
        if batch_size % world_size:
            raise ConfigError(f"stage.batch_size={batch_size} (the global batch) must be a multiple of the "
                              f"{world_size} devices (trainer.devices x trainer.num_nodes); set stage.batch_size="
                              f"{max(world_size, batch_size // world_size * world_size)} or change trainer.devices")
        self.per_rank = batch_size // world_size
        self._epoch_order: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation): see _order
        self.n = _rows(tensors)
        self.steps_per_epoch = self.n // batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"stage.batch_size={batch_size} exceeds the {self.n} {too_few}")

    def _order(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation of the rows, drawn once per epoch (not once per step: O(N) each time)."""
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_order = (epoch, torch.randperm(self.n, generator=generator))
        return self._epoch_order[1]

    def batch_indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        lo = within * self.batch_size + self.rank * self.per_rank
        return order[lo : lo + self.per_rank]

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            idx = self.batch_indices(step)
            if isinstance(self.tensors, Mapping):
                yield {key: value[idx] for key, value in self.tensors.items()}
            else:
                yield tuple(value[idx] for value in self.tensors)
