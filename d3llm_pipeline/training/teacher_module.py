"""LightningModule for the teacher: masked-diffusion SFT (thin glue over objectives.sft / objectives.losses).

Batches are (prompt_ids (B, P), response_ids (B, G)). The prompt is never masked; the response region,
EOS padding included, is masked at a per-sample noise level t ~ U(0, 1). Logs `train/loss`, `train/mask_frac`,
`train/lr`, `val/loss` and, when an evaluator is given, `val/accuracy` and `val/tpf` from real decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from d3llm_pipeline.objectives.losses import masked_cross_entropy
from d3llm_pipeline.objectives.schedules import lr_multiplier
from d3llm_pipeline.objectives.sft import sft_noise

# Fixed seed for validation noise so val/loss is comparable from one validation to the next.
VAL_NOISE_SEED = 1234


class DiffusionSFTModule(L.LightningModule):
    def __init__(
        self,
        lm: torch.nn.Module,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        max_steps: int,
        min_lr_ratio: float,
        evaluator: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm  # HFDiffusionAdapter: .logits(ids) aligned, .mask_token_id
        self.evaluator = evaluator
        self.save_hyperparameters(ignore=["lm", "evaluator"])
        self._val_generator: torch.Generator | None = None

    def _noisy_loss(self, batch, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, responses = batch  # (B, P), (B, G)
        ids = torch.cat([prompts, responses], dim=1)  # (B, L)
        maskable = torch.zeros_like(ids, dtype=torch.bool)
        maskable[:, prompts.shape[1] :] = True  # the prompt is never masked
        noisy, masked = sft_noise(ids, maskable, self.lm.mask_token_id, generator=generator)
        logits = self.lm.logits(noisy)  # (B, L, V)
        return masked_cross_entropy(logits, ids, masked), masked.float().sum() / maskable.float().sum()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, mask_frac = self._noisy_loss(batch, generator=None)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mask_frac", mask_frac)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_NOISE_SEED)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, _ = self._noisy_loss(batch, generator=self._val_generator)
        self.log("val/loss", loss, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or self.trainer.sanity_checking:
            return
        summary = self.evaluator(self.lm)
        self.log("val/accuracy", summary["accuracy"], prog_bar=True)
        self.log("val/tpf", summary["tpf"])

    def configure_optimizers(self):
        # No weight decay on 1-D parameters (biases, LayerNorm gains): standard GPT practice.
        decay, no_decay = [], []
        for param in self.lm.parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, self.hparams.warmup_steps, self.hparams.max_steps,
                                       self.hparams.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
