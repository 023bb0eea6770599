"""Tokens-per-forward (TPF) accounting for diffusion-LM decoding, following d3LLM.

A sample's *generated tokens* are the tokens before its first EOS (the EOS itself and the padding EOS run
after it do not count). TPF is a ratio of sums over a whole evaluation: total generated tokens divided by
total forward passes, where forwards spent after the EOS appeared still count (they were paid for).

    from d3llm_pipeline.decoding.metrics import generated_token_counts, tokens_per_forward
    tokens = generated_token_counts(gen_ids, eos_token_id=2)   # (B,)
    tpf = tokens_per_forward(tokens, nfe)                       # float
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def generated_token_counts(gen_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Number of tokens before the first EOS in each row of gen_ids (B, G); G when a row has no EOS.

    Returns a long tensor (B,).
    """
    if gen_ids.dim() != 2:
        raise ValueError(f"gen_ids must be (B, G), got shape {tuple(gen_ids.shape)}")
    is_eos = gen_ids == eos_token_id  # (B, G)
    # cumsum == 0 exactly on the prefix before the first EOS, so counting those entries gives its index.
    before_first = is_eos.long().cumsum(dim=-1) == 0  # (B, G)
    return before_first.sum(dim=-1)


def _as_1d(values: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
    t = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(list(values))
    if t.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


def tokens_per_forward(tokens: torch.Tensor | Sequence[float], nfe: torch.Tensor | Sequence[float]) -> float:
    """d3LLM TPF = sum(tokens) / sum(nfe) over all samples (a ratio of sums, not a mean of ratios).

    Raises ValueError when the two have different lengths or no forward pass was counted.
    """
    tok = _as_1d(tokens, "tokens")
    fwd = _as_1d(nfe, "nfe")
    if tok.shape != fwd.shape:
        raise ValueError(f"tokens and nfe differ in length: {tok.numel()} vs {fwd.numel()}")
    total_forwards = float(fwd.sum())
    if total_forwards <= 0:
        raise ValueError("tokens_per_forward needs at least one forward pass; total nfe is 0")
    return float(tok.sum()) / total_forwards
