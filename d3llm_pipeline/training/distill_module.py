"""LightningModule for d3LLM distillation: noisy windows from trajectories, CE + complementary CE + entropy.

Thin glue over the pure core (objectives.distill_masking / distill_losses / schedules). Each step draws its
randomness (mask ratio, windows, random masks) from a generator seeded by (seed, global step), so a run resumed
from a checkpoint reproduces the uninterrupted run's losses exactly. Under DDP / FSDP every rank draws the same
mask ratio and, for its rows of the global batch, the windows and masks one process would draw for them: the
noisy inputs of a step do not depend on the number of devices (training/distill_data.py gives the rows). Each
rank divides its loss terms by the global batch's row counts (all-reduced) over the world size, so DDP's averaged
gradient is the one-process gradient of the global batch: training does not depend on the device count either.
Primary and complementary inputs go through the student in one forward of 2B rows, which projects onto the
vocabulary only the masked positions the loss reads (the adapter's `keep`), never full (2B, L, V) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch

from d3llm_pipeline.config.schema import DistillConfig
from d3llm_pipeline.objectives.distill_losses import DistillLossConfig, distill_loss_rows, term_counts
from d3llm_pipeline.objectives.distill_masking import (
    apply_masks,
    count_invalid_trajectories,
    random_masks,
    response_lengths,
    sample_windows,
    trajectory_masks,
)
from d3llm_pipeline.objectives.schedules import lr_multiplier, sample_mask_ratio
from d3llm_pipeline.training.step_indexed import data_shard, step_generator
from d3llm_pipeline.training.strategies import is_fsdp


class DistillModule(L.LightningModule):
    def __init__(self, student: torch.nn.Module, distill: DistillConfig, lr: float, weight_decay: float,
                 warmup_steps: int, max_steps: int, min_lr_ratio: float, seed: int, val_every: int,
                 evaluator: Callable[[torch.nn.Module], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.student = student.train()  # HFDiffusionAdapter over a PeftModel (only LoRA weights trainable)
        self.distill = distill
        self.loss_cfg = DistillLossConfig(**asdict(distill.loss))
        self.evaluator = evaluator
        self.save_hyperparameters({"distill": asdict(distill), "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "max_steps": max_steps,
                                   "min_lr_ratio": min_lr_ratio, "seed": seed, "val_every": val_every})
        # Set by the curriculum callbacks before every batch.
        self.mask_ratio_progress = 0.0
        self.window = distill.curriculum.fixed_window

    def _generator(self) -> torch.Generator:
        # Per-step seed, the same on every rank: the draws of step s never depend on what ran before it.
        return step_generator(self.hparams.seed, self.global_step)

    def data_shard(self) -> tuple[int, int]:
        """(rank, world size) of this process; (0, 1) outside a Trainer."""
        return data_shard(self._trainer)

    def noisy_masks(self, batch: dict[str, torch.Tensor], generator: torch.Generator, rank: int = 0,
                    world: int = 1):
        """(primary, complement) (B, G) masks, the mask ratio drawn and the fallback fraction.

        The batch is rank `rank`'s share (rows [rank B, (rank + 1) B)) of a global batch of world x B rows:
        its draws are those of its rows in a single-process draw over the global batch."""
        curriculum = self.distill.curriculum
        ratio = sample_mask_ratio(self.mask_ratio_progress, curriculum.r_min, curriculum.r_max, generator)
        targets, steps = batch["targets"], batch["unmask_step"]
        rows = {"row_offset": rank * targets.shape[0], "total_rows": world * targets.shape[0]}
        lengths = response_lengths(targets, self.student.eos_token_id)
        # Random draws happen on the CPU generator (same numbers on any device), then move to the batch's device.
        start_cpu, end_cpu = sample_windows(lengths.cpu(), self.window, targets.shape[1], generator, **rows)
        device = targets.device
        if self.distill.masking == "random":  # the naive-random-mask baseline: its own explicit path
            primary, complement = random_masks(start_cpu, end_cpu, targets.shape[1], ratio, generator, **rows)
            return primary.to(device), complement.to(device), ratio, 0.0
        primary, complement = trajectory_masks(steps, start_cpu.to(device), end_cpu.to(device), ratio)
        invalid = count_invalid_trajectories(steps)  # (B,) rows with never-revealed positions
        fallback = float(invalid.float().mean())
        if fallback > 0:  # counted and logged as distill/fallback_frac, never silently the baseline
            rand_p, rand_c = random_masks(start_cpu, end_cpu, targets.shape[1], ratio, generator, **rows)
            primary = torch.where(invalid[:, None], rand_p.to(device), primary)
            complement = torch.where(invalid[:, None], rand_c.to(device), complement)
        return primary, complement, ratio, fallback

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float, float]:
        prompt, targets = batch["prompt_ids"], batch["targets"]  # (B, P), (B, G)
        primary, complement, ratio, fallback = self.noisy_masks(batch, self._generator(), *self.data_shard())
        mask_id = self.student.mask_token_id
        inputs = apply_masks(prompt, targets, primary, mask_id)  # (B, P+G)
        no_prompt = torch.zeros_like(prompt, dtype=torch.bool)  # the prompt is never in the loss
        primary_full = torch.cat([no_prompt, primary], dim=1)
        complement_full = torch.cat([no_prompt, complement], dim=1)
        full_targets = torch.cat([prompt, targets], dim=1)
        # Left-padded prompts (real prompt sets, tasks/prompt_sets.py) keep their pads out of attention, as when the
        # teacher labelled them (the data module computes the mask once); absent: attend everywhere as before.
        attention = batch.get("prompt_attention")  # (B, P) bool or None
        if attention is not None:
            attention = torch.cat([attention, torch.ones_like(targets, dtype=torch.bool)], dim=1).long()  # (B, P+G)
        # Logits only at the masked positions every term reads (keep): (N, V) rows instead of (2B, L, V) at a
        # 126k-152k vocabulary. The rows come in row-major order of the True entries, so the primary rows
        # (first B input rows) precede the complementary ones.
        if self.loss_cfg.complementary:
            both = torch.cat([inputs, apply_masks(prompt, targets, complement, mask_id)])  # (2B, P+G)
            keep = torch.cat([primary_full, complement_full])  # (2B, P+G)
            both_attention = torch.cat([attention, attention]) if attention is not None else None
            rows = self.student.logits(both, both_attention, keep=keep)  # (N + N', V)
            n_primary = int(primary_full.sum())
            rows, rows_comp = rows[:n_primary], rows[n_primary:]
        else:
            rows, rows_comp = self.student.logits(inputs, attention, keep=primary_full), None
        targets_rows, targets_comp = full_targets[primary_full], full_targets[complement_full]
        terms = distill_loss_rows(rows, rows_comp, targets_rows, targets_comp, self.loss_cfg,
                                  self._global_denominators(rows, targets_rows, rows_comp, targets_comp))
        return terms, ratio, fallback

    def _global_denominators(self, rows, targets, rows_comp, targets_comp) -> torch.Tensor | None:
        """Under data parallelism: the global batch's row counts per term / world size (objectives.distill_losses
        term_counts), so that DDP's average of the ranks' gradients is the one-process gradient of the global
        batch. None on one device (each term its own mean, as always)."""
        _, world = self.data_shard()
        if world == 1:
            return None
        counts = term_counts(rows.detach(), targets, rows_comp.detach() if rows_comp is not None else None,
                             targets_comp if rows_comp is not None else None)
        return self.trainer.strategy.reduce(counts, reduce_op="sum") / world  # an all-reduce, no host sync

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms, ratio, fallback = self.compute_loss(batch)
        # several devices: each rank's terms are its share (x world) of the global means; their mean is the loss
        sync = self.data_shard()[1] > 1
        self.log("train/loss", terms["loss"], prog_bar=True, sync_dist=sync)
        for key in ("ce", "ce_comp", "entropy", "entropy_comp"):
            self.log(f"train/{key}", terms[key], sync_dist=sync)
        self.log("train/mask_ratio_sampled", ratio)
        self.log("distill/fallback_frac", fallback)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return terms["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        if self.evaluator is None or step % self.hparams.val_every and step != self.hparams.max_steps:
            return
        self.student.eval()
        summary = self.evaluator(self.student)
        self.student.train()
        self.log("val/accuracy", summary["accuracy"], prog_bar=True)
        self.log("val/tpf", summary["tpf"], prog_bar=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = [i for i, p in enumerate(self.student.parameters()) if p.requires_grad]
        total = sum(1 for _ in self.student.parameters())
        for state in checkpoint.get("optimizer_states", []):
            renumber_trainable_only(state, trainable, total)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and is_fsdp(self.trainer.strategy):
            # Lightning's FSDP precision refuses norm clipping; the FSDP root clips by the norm of the full gradient
            # over every rank's shards (a collective), the norm one unsharded process clips by
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        # Every student parameter, the frozen ones too (they never get a gradient, so AdamW keeps no state for them
        # and never decays them): the optimizer's parameter ids are then positions in the module's parameters(),
        # the ids Lightning's FSDP checkpoints use, so a run resumes across plain / DDP and FSDP.
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, self.hparams.warmup_steps, self.hparams.max_steps,
                                       self.hparams.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def renumber_trainable_only(optimizer_state: dict[str, Any], trainable: list[int], total: int) -> None:
    """Upgrade, in place, an optimizer state written when the optimizer held only the trainable (LoRA) parameters,
    numbered 0..n-1 in that order, to today's numbering over all `total` student parameters (`trainable`: the
    positions of the trainable ones). A state already numbered over all parameters is left alone."""
    (group,) = optimizer_state["param_groups"]  # configure_optimizers makes one group
    if len(group["params"]) == total or len(group["params"]) != len(trainable):
        return
    optimizer_state["state"] = {trainable[i]: value for i, value in optimizer_state["state"].items()}
    group["params"] = list(range(total))
