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
    accept = select_tokens(pred, candidates, "threshold", "entropy", threshold=0.4, tokens_per_step=1)

Ties are broken deterministically in favour of the lowest position: candidates are ordered with a *stable*
sort of their score, so equal scores keep their left-to-right order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from d3llm_pipeline.decoding.spec import RULES, SCORES

# the per-block selection rules (rule "d3llm" selects by threshold across several blocks: multi_block.py)
SELECTION_RULES = tuple(rule for rule in RULES if rule != "d3llm")


@dataclass(frozen=True)
class Prediction:
    """The model's guess at every candidate position; all fields are (B, K)."""

    tokens: torch.Tensor  # (B, K) long, argmax over the allowed vocabulary
    confidence: torch.Tensor  # (B, K) float32 (float64 if asked), probability of `tokens`
    entropy: torch.Tensor  # (B, K) float32 (float64 if asked), Shannon entropy (nats) of the softmax

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


# On CPU the rule's passes over the vocabulary are memory-bound: rows are processed in chunks of about this many
# bytes so that every pass after the first finds them in L2 (128 x 32k candidates: 30 ms in one piece, 8.5 ms in
# chunks of 8 rows, measured on the 2-core CI machine). GPUs take the whole block in one launch.
_CPU_CHUNK_BYTES = 1 << 20


def predict(
    logits: torch.Tensor,
    banned_ids: Iterable[int] | torch.Tensor = (),
    temperature: float = 0.0,
    gumbel: torch.Tensor | None = None,
    consume: bool = False,
    dtype: str = "float32",
) -> Prediction:
    """Predicted token, confidence and entropy from logits (..., V); sampled at `temperature` > 0.

    Banned ids (MASK, PAD) are excluded: never predicted, no probability mass. The arithmetic runs in float32
    (enough to rank scores; bf16/fp16 outputs would make entropies and ties noisy), or in float64 with
    dtype="float64" (decode.entropy_dtype): the official d3LLM code computes entropies in float64, and two
    candidates closer than float32 resolves (~1e-7 nats) are then ranked as it ranks them. `consume=True` lets
    the function work in place on logits of that dtype the caller no longer needs (the decoders' own fresh
    tensors), saving a copy of the block.
    """
    if temperature > 0 and gumbel is None:
        raise ValueError("temperature > 0 needs Gumbel noise (see decoding.noise.gumbel_noise)")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    z = logits.to(torch.float64 if dtype == "float64" else torch.float32)
    if z is logits and not consume:
        z = z.clone()
    z = z.reshape(-1, vocab)  # (n, V)
    noise = gumbel.reshape(-1, vocab) if gumbel is not None and temperature > 0 else None
    banned = ids_tensor(banned_ids, z.device)
    n = z.shape[0]
    step = max(1, _CPU_CHUNK_BYTES // (z.element_size() * vocab)) if z.device.type == "cpu" else max(n, 1)
    parts = [_predict_rows(z[lo : lo + step], banned, temperature, None if noise is None else noise[lo : lo + step])
             for lo in range(0, n, step)]
    tokens, confidence, entropy = (torch.cat(t).reshape(lead) for t in zip(*parts, strict=True)) if parts else (
        z.new_zeros(lead, dtype=torch.long), z.new_zeros(lead), z.new_zeros(lead))
    return Prediction(tokens=tokens, confidence=confidence, entropy=entropy)


def ids_tensor(ids: Iterable[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sorted distinct token ids as a long tensor on `device`, filled in place: `torch.tensor(list, device=cuda)`
    would be a blocking upload (a host sync) on every call."""
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.long)
    values = sorted({int(i) for i in ids})
    out = torch.empty(len(values), dtype=torch.long, device=device)
    for i, value in enumerate(values):
        out[i].fill_(value)  # a fill kernel with a Python scalar: no copy from the host
    return out


def _predict_rows(
    z: torch.Tensor, banned: torch.Tensor, temperature: float, gumbel: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, confidence, entropy), each (c,), from float32 / float64 logits z (c, V) that may be overwritten.

    Entropy without materialising log p: with m = max z and p = softmax(z - m), the argmax has
    p* = exp(-lse(z - m)), so H = -sum p log p = -log p* - sum p (z - m). Passes over V: one max, one shift,
    the softmax (vectorised exp), a blocked max over p (token and confidence) and one fused dot product.
    """
    if banned.numel():
        z.index_fill_(-1, banned, float("-inf"))
    z.sub_(z.amax(dim=-1, keepdim=True))  # z - m <= 0: well-conditioned sums below; banned stay -inf
    probs = torch.softmax(z, dim=-1)  # (c, V); banned -> 0
    confidence, tokens = _max_with_index(probs)  # (c,) each; first maximum on ties
    if banned.numel():
        z.index_fill_(-1, banned, 0.0)  # p = 0 there: avoids 0 * -inf = nan in the dot product
    entropy = -confidence.log() - torch.linalg.vecdot(probs, z)  # (c,) nats
    if gumbel is not None:
        # Gumbel-max: argmax(logits / T + g) is a draw from softmax(logits / T); z is logits shifted by a
        # per-row constant, which changes neither. Banned ids get -inf again. The confidence stays the
        # unperturbed probability of the drawn token (as in LLaDA's low-confidence remasking).
        scores = z / temperature + gumbel.to(z.dtype)
        if banned.numel():
            scores.index_fill_(-1, banned, float("-inf"))
        tokens = scores.argmax(dim=-1)
        confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence, entropy


def _max_with_index(probs: torch.Tensor, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`probs.max(-1)` for (c, V), in two small steps when V is a multiple of `width`.

    A max that also tracks its index is a slow, scalar loop on CPU (213 us for 8 x 32k rows, against 15 us for a
    plain vectorised `amax`): take the vectorised max of each run of `width` entries, then the index-tracking
    max over the V / width run maxima and inside the one winning run (51 us, same result, first maximum on ties).
    """
    rows, vocab = probs.shape
    if vocab % width or vocab < 4 * width:
        return probs.max(dim=-1)
    runs = probs.view(rows, vocab // width, width)  # (c, V/w, w)
    best, run = runs.amax(dim=-1).max(dim=-1)  # (c,) each: the first run holding the maximum
    inside = runs.gather(1, run.view(rows, 1, 1).expand(-1, 1, width)).squeeze(1).argmax(dim=-1)  # (c,)
    return best, run * width + inside


def scatter_prediction(flat: Prediction, where: torch.Tensor, count: int | None = None) -> Prediction:
    """Spread predictions made for the True entries of `where` (A, K), in row-major order, back to (A, K).

    Elsewhere: token 0, confidence 0 and entropy +inf (never better than a real candidate under either score).
    `count`: the number of True entries, if the caller knows it; then no host sync is needed (a boolean-mask
    assignment must read the mask to size its index on the host).
    """
    tokens = torch.zeros(where.shape, dtype=flat.tokens.dtype, device=where.device)
    confidence = torch.zeros(where.shape, dtype=flat.confidence.dtype, device=where.device)
    entropy = torch.full(where.shape, float("inf"), dtype=flat.entropy.dtype, device=where.device)
    if count is None:
        tokens[where], confidence[where], entropy[where] = flat.tokens, flat.confidence, flat.entropy
    else:
        at = where.reshape(-1).nonzero_static(size=count).squeeze(1)  # (n,) flat positions, row-major
        for target, source in ((tokens, flat.tokens), (confidence, flat.confidence), (entropy, flat.entropy)):
            target.view(-1).index_copy_(0, at, source.reshape(-1))
    return Prediction(tokens=tokens, confidence=confidence, entropy=entropy)


def _rank_key(score: torch.Tensor, candidates: torch.Tensor, higher_better: bool) -> torch.Tensor:
    """Sort key (B, K) where smaller means better and non-candidates sort last."""
    key = -score if higher_better else score  # negation is exact, so ties survive
    return key.masked_fill(~candidates, float("inf"))


def select_vanilla(
    score: torch.Tensor, candidates: torch.Tensor, k: int, higher_better: bool
) -> torch.Tensor:
    """Accept the `k` best candidates per row (fewer if fewer remain); returns a bool mask (B, K).

    score, candidates: (B, K). Equal scores are resolved towards the lowest position (argmin returns the first
    minimum; for k > 1 a stable sort keeps equal scores in position order).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    key = _rank_key(score, candidates, higher_better)  # (B, K)
    if k == 1:  # the common case (threshold rules, forced progress): no sort needed
        top = key.argmin(dim=-1, keepdim=True)  # (B, 1)
    else:
        top = torch.sort(key, dim=-1, stable=True).indices[:, : min(k, key.shape[-1])]  # (B, k') best first
    accept = torch.zeros_like(candidates)
    # A row with fewer than k candidates still has k entries in `top`; the extra ones point at
    # non-candidates and are dropped by gathering the candidate flag.
    accept.scatter_(-1, top, candidates.gather(-1, top))
    return accept


def passes_threshold(score: torch.Tensor, threshold: float, higher_better: bool, inclusive: bool = False
                     ) -> torch.Tensor:
    """Whether each score is better than `threshold` (B, K); `inclusive` also passes a score equal to it."""
    if higher_better:
        return score >= threshold if inclusive else score > threshold
    return score <= threshold if inclusive else score < threshold


def select_threshold(
    score: torch.Tensor, candidates: torch.Tensor, threshold: float, higher_better: bool, inclusive: bool = False
) -> torch.Tensor:
    """Accept candidates better than `threshold` (or equal to it, `inclusive`), plus the single best one (B, K).

    Forcing the best candidate in guarantees that every row with a candidate reveals at least one token per
    forward pass, so decoding cannot stall when nothing clears the threshold. LLaDA's official decoder passes
    H <= τ (inclusive), Dream's H < τ (the family's `decode_defaults.inclusive_threshold`).
    """
    passes = passes_threshold(score, threshold, higher_better, inclusive)  # (B, K)
    best = select_vanilla(score, candidates, 1, higher_better)  # (B, K)
    return (passes & candidates) | best


def select_tokens(
    pred: Prediction,
    candidates: torch.Tensor,
    rule: str,
    score: str,
    threshold: float,
    tokens_per_step: int,
    inclusive: bool = False,
) -> torch.Tensor:
    """Apply the named rule to a `Prediction` over candidates (B, K); returns the accept mask (B, K)."""
    values = pred.score(score)  # (B, K)
    hib = higher_is_better(score)
    if rule == "vanilla":
        return select_vanilla(values, candidates, tokens_per_step, hib)
    if rule == "threshold":
        return select_threshold(values, candidates, threshold, hib, inclusive)
    raise ValueError(f"unknown rule {rule!r}; expected one of {SELECTION_RULES}")
