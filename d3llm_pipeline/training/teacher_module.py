"""LightningModule for the teacher: masked-diffusion SFT (thin glue over objectives.sft / objectives.losses).

Batches are (prompt_ids (B, P), response_ids (B, G)). The prompt is never masked; the response region,
EOS padding included, is masked at a per-sample noise level t ~ U(0, 1). Logs `train/loss`, `train/mask_frac`,
`train/lr`, `val/loss` and, when an evaluator is given, `val/accuracy` and `val/tpf` from real decoding.

Every random number of a training step comes from (seed, step) (training/step_indexed.py): the masking noise from a
generator of its own and, when the model has dropout, the dropout masks from the global RNG reseeded for the forward
and restored after it. Nothing else draws from a stream training reads, so a resumed run reproduces the
uninterrupted one bit for bit and validation (whenever it runs) never changes the weights. Under DDP each rank
draws, for its rows, what one process drawing the whole global batch would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from d3llm_pipeline.objectives.losses import masked_cross_entropy
from d3llm_pipeline.objectives.schedules import lr_multiplier
from d3llm_pipeline.objectives.sft import sft_noise
from d3llm_pipeline.training.step_indexed import data_shard, step_generator, step_seed

# Fixed seed for validation noise so val/loss is comparable from one validation to the next.
VAL_NOISE_SEED = 1234
# The per-step streams (training/step_indexed.py) of a training micro-batch
NOISE_STREAM, DROPOUT_STREAM = 0, 1


class DiffusionSFTModule(L.LightningModule):
    def __init__(
        self,
        lm: torch.nn.Module,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        max_steps: int,
        min_lr_ratio: float,
        seed: int,
        evaluator: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm  # HFDiffusionAdapter: .logits(ids) aligned, .mask_token_id
        self.evaluator = evaluator
        self.save_hyperparameters(ignore=["lm", "evaluator"])
        self._val_generator: torch.Generator | None = None
        # (the step last seen, micro-batches of it seen before this one): see micro_batch
        self._seen: tuple[int | None, int] = (None, 0)
        self._dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in lm.modules())

    def micro_batch(self) -> int:
        """The index of this training batch in the run: step x accumulate_grad_batches + its place in the step.

        Counted here rather than read off Lightning's batch index, which a resumed run restarts: checkpoints are
        written at step boundaries, so a resumed run's first batch is the first of its step."""
        accumulate = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        step, seen = self._seen
        within = seen + 1 if step == self.global_step else 0
        self._seen = (self.global_step, within)
        return self.global_step * accumulate + within

    def _dropout_seeded(self, micro: int, rank: int):
        """The forward's dropout masks from (seed, micro-batch, rank), the global RNG put back after it."""
        if not self._dropout:  # dropout 0 (the default) draws nothing
            return contextlib.nullcontext()
        # rank << 48 lies above every step seed of a seed under ~4 million: the ranks never share dropout masks
        return _reseeded(step_seed(self.hparams.seed, micro, DROPOUT_STREAM) + (rank << 48), self.device)

    def _noisy_loss(self, batch, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, responses = batch  # (B, P), (B, G): rank `rank`'s rows of a global batch of world x B
        ids = torch.cat([prompts, responses], dim=1)  # (B, L)
        maskable = torch.zeros_like(ids, dtype=torch.bool)
        maskable[:, prompts.shape[1] :] = True  # the prompt is never masked
        noisy, masked = sft_noise(ids, maskable, self.lm.mask_token_id, generator=generator,
                                  row_offset=rank * ids.shape[0], total_rows=world * ids.shape[0])
        logits = self.lm.logits(noisy)  # (B, L, V)
        return masked_cross_entropy(logits, ids, masked), masked.float().sum() / maskable.float().sum()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        micro = self.micro_batch()
        rank, world = data_shard(self._trainer)
        noise = step_generator(self.hparams.seed, micro, NOISE_STREAM, device=self.device)
        with self._dropout_seeded(micro, rank):  # (backward reuses the forward's masks: nothing more is drawn)
            loss, mask_frac = self._noisy_loss(batch, noise, rank, world)
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


@contextlib.contextmanager
def _reseeded(seed: int, device: torch.device):
    """The global RNG (CPU, and `device`'s when it is a GPU) seeded with `seed` inside, restored on the way out."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
