"""Per-step token scoring and selection rules for masked-diffusion decoding (pure tensor functions).

One decoding step looks at the logits of the candidate positions (the still-masked positions of the current
block), predicts a token for each of them and decides which predictions to keep. This module holds the two
halves of that decision:

* `predict` turns logits into a predicted token, its confidence (max softmax probability, higher is better)
  and the entropy of the softmax (lower is better), never predicting banned ids such as MASK or PAD.
* `select_vanilla` keeps the k best candidates; `select_threshold` keeps every candidate that clears a
  threshold plus, always, the single best one (so every step makes progress). `select_tokens` dispatches.

    from d3llm_pipeline.decoding.selection import predict, select_tokens
    pred = predict(block_logits, banned_ids=[mask_id, pad_id])           # fields (B, K)
    accept = select_tokens(pred, candidates, rule="threshold", score="entropy", threshold=0.4)

Ties are broken deterministically in favour of the lowest position: candidates are ordered with a *stable*
sort of their score, so equal scores keep their left-to-right order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

RULES = ("vanilla", "threshold")
SCORES = ("confidence", "entropy")


@dataclass(frozen=True)
class Prediction:
    """The model's guess at every candidate position; all fields are (B, K)."""

    tokens: torch.Tensor  # (B, K) long, argmax over the allowed vocabulary
    confidence: torch.Tensor  # (B, K) float32, probability of `tokens`
    entropy: torch.Tensor  # (B, K) float32, Shannon entropy (nats) of the softmax

    def score(self, name: str) -> torch.Tensor:
        """The named score, (B, K)."""
        if name == "confidence":
            return self.confidence
        if name == "entropy":
            return self.entropy
        raise ValueError(f"unknown score {name!r}; expected one of {SCORES}")


def higher_is_better(score: str) -> bool:
    """Whether larger values of `score` mean a more trustworthy prediction."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    return score == "confidence"


def predict(
    logits: torch.Tensor,
    banned_ids: Iterable[int] = (),
    temperature: float = 0.0,
    gumbel: torch.Tensor | None = None,
) -> Prediction:
    """Predicted token, confidence and entropy from logits (..., V); sampled at `temperature` > 0.

    Banned ids (MASK, PAD) get -inf logits before the softmax, so they are never predicted and carry no
    probability mass. The softmax runs in float32: enough to rank scores, and bf16/fp16 model outputs would
    otherwise make entropies and ties noisy.
    """
    logits = logits.float()  # (..., V)
    banned = sorted({int(i) for i in banned_ids})
    if banned:
        logits = logits.clone()
        logits[..., banned] = float("-inf")
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    if temperature > 0:
        if gumbel is None:
            raise ValueError("temperature > 0 needs Gumbel noise (see decoding.noise.gumbel_noise)")
        # Gumbel-max: argmax(logits / T + g) is a draw from softmax(logits / T). The confidence stays the
        # unperturbed probability of the drawn token (as in LLaDA's low-confidence remasking).
        tokens = (logits / temperature + gumbel).argmax(dim=-1)  # (...,)
        confidence = probs.gather(-1, tokens[..., None]).squeeze(-1)
    else:
        confidence, tokens = probs.max(dim=-1)  # (...,) each
    # entr(p) = -p log p with entr(0) = 0, so banned (p = 0) entries do not turn the sum into NaN.
    entropy = torch.special.entr(probs).sum(dim=-1)  # (...,)
    return Prediction(tokens=tokens, confidence=confidence, entropy=entropy)


def _rank_key(score: torch.Tensor, candidates: torch.Tensor, higher_better: bool) -> torch.Tensor:
    """Sort key (B, K) where smaller means better and non-candidates sort last."""
    key = -score if higher_better else score  # negation is exact, so ties survive
    return key.masked_fill(~candidates, float("inf"))


def select_vanilla(
    score: torch.Tensor, candidates: torch.Tensor, k: int, higher_better: bool
) -> torch.Tensor:
    """Accept the `k` best candidates per row (fewer if fewer remain); returns a bool mask (B, K).

    score, candidates: (B, K). Equal scores are resolved towards the lowest position via a stable sort.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    key = _rank_key(score, candidates, higher_better)  # (B, K)
    order = torch.sort(key, dim=-1, stable=True).indices  # (B, K) positions, best first
    top = order[:, : min(k, key.shape[-1])]  # (B, k')
    accept = torch.zeros_like(candidates)
    # A row with fewer than k candidates still has k entries in `top`; the extra ones point at
    # non-candidates and are dropped by gathering the candidate flag.
    accept.scatter_(-1, top, candidates.gather(-1, top))
    return accept


def select_threshold(
    score: torch.Tensor, candidates: torch.Tensor, threshold: float, higher_better: bool
) -> torch.Tensor:
    """Accept candidates strictly better than `threshold`, plus the single best one; bool mask (B, K).

    Forcing the best candidate in guarantees that every row with a candidate reveals at least one token per
    forward pass, so decoding cannot stall when nothing clears the threshold.
    """
    passes = score > threshold if higher_better else score < threshold  # (B, K)
    best = select_vanilla(score, candidates, 1, higher_better)  # (B, K)
    return (passes & candidates) | best


def select_tokens(
    pred: Prediction,
    candidates: torch.Tensor,
    rule: str,
    score: str,
    threshold: float = 0.4,
    tokens_per_step: int = 1,
) -> torch.Tensor:
    """Apply the named rule to a `Prediction` over candidates (B, K); returns the accept mask (B, K)."""
    values = pred.score(score)  # (B, K)
    hib = higher_is_better(score)
    if rule == "vanilla":
        return select_vanilla(values, candidates, tokens_per_step, hib)
    if rule == "threshold":
        return select_threshold(values, candidates, threshold, hib)
    raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
