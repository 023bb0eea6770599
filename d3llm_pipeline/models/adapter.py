"""The model adapter: everything the pure algorithms need to know about a diffusion LM.

Decoding, masking and losses only ever talk to a `DiffusionLM`: token ids of MASK / EOS / PAD and a
`logits(input_ids, attention_mask)` call whose output is *aligned*, i.e. `logits[:, i]` predicts token `i`.
Family specifics stay here: Dream-style models predict token i from output i-1, so their logits are shifted
right by one (position 0 reuses its own output); LLaDA-style models and the tiny teacher need no shift.

    from d3llm_pipeline.models.adapter import HFDiffusionAdapter
    lm = HFDiffusionAdapter(hf_model, mask_token_id=1, eos_token_id=2, pad_token_id=0)
    logits = lm.logits(ids)            # (B, L, V)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DiffusionLM(Protocol):
    """What the decoders and losses require of a model (no Hugging Face types leak through)."""

    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    shift_logits: bool

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, L) -> (B, L, V), aligned so that [:, i] predicts token i
        ...


def align_logits(raw: torch.Tensor, shift: bool) -> torch.Tensor:
    """Return logits where position i predicts token i.

    Dream-style (shift=True) models emit the prediction for token i at output i-1: move every row right by one
    and let position 0 reuse its own output (it is always part of the prompt, so its value never matters).
    """
    if not shift:
        return raw
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


class HFDiffusionAdapter(torch.nn.Module):
    """Wraps a Hugging Face model whose forward returns `.logits` (B, L, V) under full bidirectional attention."""

    def __init__(
        self,
        model: torch.nn.Module,
        mask_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        shift_logits: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.mask_token_id = int(mask_token_id)
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.shift_logits = bool(shift_logits)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Aligned logits (B, L, V) and the KV cache (None unless `use_cache`)."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        cache = out.past_key_values if use_cache else None
        return align_logits(out.logits, self.shift_logits), cache

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.forward(input_ids, attention_mask)[0]
