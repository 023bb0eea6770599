"""Curriculum callbacks (thin Lightning glue over objectives.schedules), both pure functions of the step.

- `MaskRatioCurriculum`: the lower bound of the mask ratio rises linearly r_min -> r_max over training and the
  module draws r ~ U(bound, r_max) each step (d3LLM §4.1); disabled = a fixed range U(r_min, r_max).
- `WindowCurriculum`: the training window follows a per-epoch list, interpolated within each epoch (d3LLM §4.2);
  disabled = a fixed window. The list is spread over the whole run (entry i covers the i-th 1/len(list) of the
  steps), which is d3LLM's per-epoch schedule when the run has len(list) epochs, and still ends at the last
  size when it has fewer or more.
Both set attributes on the module before every batch and log `curriculum/mask_ratio` (the lower bound) and
`curriculum/window`. Being functions of `global_step` only, they resume exactly from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from d3llm_pipeline.objectives.schedules import mask_ratio_bounds, window_size


class MaskRatioCurriculum(L.Callback):
    def __init__(self, enabled: bool, r_min: float, r_max: float, max_steps: int) -> None:
        self.enabled, self.r_min, self.r_max, self.max_steps = enabled, r_min, r_max, max_steps

    def progress(self, step: int) -> float:
        return min(1.0, step / self.max_steps) if self.enabled else 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        progress = self.progress(trainer.global_step)
        pl_module.mask_ratio_progress = progress
        low, high = mask_ratio_bounds(progress, self.r_min, self.r_max)
        pl_module.log("curriculum/mask_ratio", low, on_step=True, on_epoch=False)
        pl_module.log("curriculum/mask_ratio_max", high, on_step=True, on_epoch=False)


class WindowCurriculum(L.Callback):
    def __init__(self, enabled: bool, sizes: Sequence[int], fixed: int, max_steps: int) -> None:
        self.enabled, self.sizes, self.fixed, self.max_steps = enabled, list(sizes), fixed, max_steps

    def window(self, step: int) -> int:
        if not self.enabled:
            return self.fixed
        # The last step lands on len(sizes) - 1 + (1 - 1/max_steps): inside the last entry.
        return window_size(step / self.max_steps * len(self.sizes), self.sizes)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.window = self.window(trainer.global_step)
        pl_module.log("curriculum/window", float(pl_module.window), on_step=True, on_epoch=False)
