"""What a decoder requires of a model: the `DiffusionLM` protocol (models/adapter.py implements it).

The decoders and losses only ever talk to this: the token ids of MASK / EOS / PAD and a
`logits(input_ids, attention_mask, keep)` call whose output is *aligned* (`logits[:, i]` predicts token `i`).
Defined here, beside the decoders that use it, so the pure core never imports a model implementation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# Per layer (keys, values), each (B, H, T, D): T positions of one contiguous span (the prefix KV cache).
KV = list[tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class DiffusionLM(Protocol):
    """What the decoders and losses require of a model (no Hugging Face types leak through)."""

    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    shift_logits: bool

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, L) -> (B, L, V) aligned so that [:, i] predicts token i; (n, V) with keep
        ...
