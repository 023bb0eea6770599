"""Learning-rate and curriculum schedules as pure functions of the step (no framework imports).

lr_multiplier(step=100, warmup_steps=50, total_steps=1500, min_ratio=0.1)  # -> 0.999...
window_size(epoch_progress=1.5, sizes=[16, 16, 24, 24, 32, 32])          # -> 20
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`.

    Step 0 gets 1/warmup (not 0) so the very first update already moves the weights.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def mask_ratio_bounds(progress: float, r_min: float = 0.0, r_max: float = 0.8) -> tuple[float, float]:
    """d3LLM mask-ratio curriculum (method.md §4.1): the lower bound rises linearly from r_min to r_max.

    progress = global_step / max_steps, clamped to [0, 1]. Returns (low, high) with high = r_max, so late
    training only sees high mask ratios (the hard, few-clean-tokens regime).
    """
    p = min(max(progress, 0.0), 1.0)
    return r_min + p * (r_max - r_min), r_max


def sample_mask_ratio(
    progress: float, r_min: float = 0.0, r_max: float = 0.8, generator: torch.Generator | None = None
) -> float:
    """One r ~ Uniform(low, high) from `mask_ratio_bounds`, shared by the whole micro-batch (as in d3LLM)."""
    low, high = mask_ratio_bounds(progress, r_min, r_max)
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return low + u * (high - low)


def window_size(epoch_progress: float, sizes: Sequence[int]) -> int:
    """d3LLM block-size curriculum (method.md §4.2) at fractional epoch e.

    i = min(floor(e), len(sizes) - 1); the last entry is held; otherwise interpolate linearly towards
    sizes[i + 1] and truncate to int (e.g. [16, 16, 24, 24, 32, 32] at e = 1.5 -> 20).
    """
    if len(sizes) == 0:
        raise ValueError("sizes must not be empty")
    e = max(epoch_progress, 0.0)
    i = min(math.floor(e), len(sizes) - 1)
    if i == len(sizes) - 1:
        return int(sizes[i])
    return int(sizes[i] + (e - i) * (sizes[i + 1] - sizes[i]))
