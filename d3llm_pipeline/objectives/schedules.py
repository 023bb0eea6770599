"""Learning-rate and curriculum schedules as pure functions of the step (no framework imports).

    lr_multiplier(step=100, warmup_steps=50, total_steps=1500, min_ratio=0.1)  # -> 0.999...
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`.

    Step 0 gets 1/warmup (not 0) so the very first update already moves the weights.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
