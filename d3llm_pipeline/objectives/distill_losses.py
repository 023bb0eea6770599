"""d3LLM distillation losses (method.md §3): masked CE, complementary CE and an entropy penalty, pure torch.

    cfg = DistillLossConfig()                                   # LLaDA recipe: (CE + CE' + 2 H) / 4
    out = distill_loss(logits, logits_comp, targets_full, primary, complement, cfg)   # full (B, L, V) logits
    out = distill_loss_rows(rows, rows_comp, targets, targets_comp, cfg)  # only the masked rows (training)
    out["loss"].backward()                                      # other keys are for logging

All masks here cover the full sequence (prompt + generation region); the caller pads the (B, G) region masks
with False over the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Inside the log of the entropy, exactly as in the d3LLM trainer, so our values match the reference.
_LOG_EPS = 1e-12


def entropy_on_correct_rows(rows: torch.Tensor, targets: torch.Tensor, temperature: float,
                            denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean predictive entropy over the rows whose raw-logit argmax equals their target.

    q = softmax(rows / T) in float32, H_tok = -sum q log(q + 1e-12). Penalising it on already-correct
    predictions sharpens them, so more tokens pass the confidence/entropy threshold at decode time.
    Returns a scalar; 0 (with a graph, so backward still works) when no row qualifies.
    `denominator` (a scalar tensor) replaces the local count of qualifying rows: sum / denominator (see
    `distill_loss_rows`).

    rows: (N, V) logits of the masked positions; targets: (N,).
    """
    correct = rows.argmax(dim=-1) == targets  # (N,)
    # Select before the softmax: only a few positions qualify and V can be ~100k.
    selected = rows[correct].float()  # (M, V)
    if selected.shape[0] == 0:
        return rows.sum() * 0.0
    q = torch.softmax(selected / temperature, dim=-1)  # (M, V)
    h_tok = -(q * torch.log(q + _LOG_EPS)).sum(dim=-1)  # (M,)
    return h_tok.mean() if denominator is None else h_tok.sum() / denominator.clamp(min=1)


def entropy_on_correct(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`entropy_on_correct_rows` over the masked positions of full logits (B, L, V); targets, masked: (B, L)."""
    return entropy_on_correct_rows(logits[masked], targets[masked], temperature)


def cross_entropy_rows(rows: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Mean token cross-entropy of (N, V) rows against (N,) targets in float32 (= losses.masked_cross_entropy
    of the full logits); 0 with a graph when N = 0. `denominator` (a scalar tensor) replaces N: sum / denominator."""
    if rows.shape[0] == 0:
        return rows.sum() * 0.0
    if denominator is None:
        return F.cross_entropy(rows.float(), targets, reduction="mean")
    return F.cross_entropy(rows.float(), targets, reduction="sum") / denominator.clamp(min=1)


def term_counts(rows: torch.Tensor, targets: torch.Tensor, rows_comp: torch.Tensor | None,
                targets_comp: torch.Tensor | None) -> torch.Tensor:
    """(4,) float32 on rows' device: how many rows each term of `distill_loss_rows` averages over (CE, CE',
    H, H': masked rows, complementary rows, argmax-correct rows of each). No host sync (counts stay tensors).

    Data-parallel training sums these over the ranks and passes them (divided by the world size) as the
    denominators: each rank's loss is then its share of the global batch's means, and DDP's gradient average is
    the gradient of the one-process loss on the whole global batch."""
    def correct(r: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
        return (r.argmax(-1) == t).sum() if r is not None and r.shape[0] else rows.new_zeros((), dtype=torch.long)

    n_comp = rows_comp.shape[0] if rows_comp is not None else 0
    sizes = [rows.new_full((), n, dtype=torch.long) for n in (rows.shape[0], n_comp)]  # filled on the device
    return torch.stack([*sizes, correct(rows, targets), correct(rows_comp, targets_comp)]).float()


@dataclass(frozen=True)
class DistillLossConfig:
    """Weights of the distillation loss: total = scale * (CE + [CE'] + entropy_weight * (H + [H'])).

    Defaults follow the d3LLM LLaDA recipe, total = (CE + CE' + 2 * H) / 4 with H from the primary pass only.
    Dream: entropy_weight=1.0, entropy_on_complementary=True -> (CE + CE' + H + H') / 4.
    Dream-Coder: complementary=False, entropy_weight=1.0 -> (CE + H) / 4.
    """

    complementary: bool = True  # second forward on the complementary mask (dParallel-style CE')
    entropy_weight: float = 2.0  # LLaDA 2.0; Dream / Dream-Coder 1.0; 0 turns the term off
    entropy_temperature: float = 0.5  # softmax temperature of the entropy term (all d3LLM recipes)
    entropy_on_complementary: bool = False  # Dream adds H' on the complementary pass; needs complementary
    scale: float = 0.25  # the reference's constant /4 (coincides with its grad-accumulation of 4)


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A float32 scalar zero on `like`'s device, for terms that are switched off."""
    return torch.zeros((), dtype=torch.float32, device=like.device)


def distill_loss_rows(
    rows: torch.Tensor,
    rows_comp: torch.Tensor | None,
    targets: torch.Tensor,
    targets_comp: torch.Tensor | None,
    cfg: DistillLossConfig,
    denominators: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Total distillation loss and its terms from the logits of the masked positions only.

    rows: (N, V) logits of the primary-masked positions, targets: (N,) their clean tokens; rows_comp / targets_comp
    the same for the complement-masked positions of the complementary forward (None when cfg.complementary is
    False). Every term only ever reads masked positions, so this equals `distill_loss` on full (B, L, V) logits
    while a model asked only for these rows (`lm.logits(ids, keep=mask)`) never builds the full vocabulary
    projection. Returns "loss", "ce", "ce_comp", "entropy", "entropy_comp" (scalars; 0 for terms that are off).
    denominators: (4,) what CE, CE', H, H' divide their sums by (`term_counts`); None: each its own row count.
    """
    if cfg.complementary and (rows_comp is None or targets_comp is None):
        raise ValueError("cfg.complementary is True but no complementary logits were given")
    use_entropy = cfg.entropy_weight != 0.0
    temp = cfg.entropy_temperature

    d_ce, d_ce_comp, d_h, d_h_comp = [None] * 4 if denominators is None else denominators.unbind(0)
    ce = cross_entropy_rows(rows, targets, d_ce)
    entropy = entropy_on_correct_rows(rows, targets, temp, d_h) if use_entropy else _zero(rows)
    ce_comp, entropy_comp = _zero(rows), _zero(rows)
    if cfg.complementary:
        assert rows_comp is not None and targets_comp is not None  # checked above; narrows the types
        ce_comp = cross_entropy_rows(rows_comp, targets_comp, d_ce_comp)
        if use_entropy and cfg.entropy_on_complementary:
            entropy_comp = entropy_on_correct_rows(rows_comp, targets_comp, temp, d_h_comp)

    total = cfg.scale * (ce + ce_comp + cfg.entropy_weight * (entropy + entropy_comp))
    return {"loss": total, "ce": ce, "ce_comp": ce_comp, "entropy": entropy, "entropy_comp": entropy_comp}


def distill_loss(
    logits: torch.Tensor,
    logits_comp: torch.Tensor | None,
    targets_full: torch.Tensor,
    primary: torch.Tensor,
    complement: torch.Tensor,
    cfg: DistillLossConfig,
) -> dict[str, torch.Tensor]:
    """`distill_loss_rows` on full logits (the reference form; training asks the model for the rows only).

    logits, logits_comp: (B, L, V) from the primary / complementary forwards (logits_comp may be None when
    cfg.complementary is False); targets_full: (B, L) clean sequence; primary, complement: (B, L) bool masks.
    The entropy terms count as off when entropy_weight == 0; entropy_comp also needs the complementary pass.
    """
    if cfg.complementary and logits_comp is None:
        raise ValueError("cfg.complementary is True but no complementary logits were given")
    rows_comp = logits_comp[complement] if logits_comp is not None else None
    return distill_loss_rows(logits[primary], rows_comp, targets_full[primary], targets_full[complement], cfg)
