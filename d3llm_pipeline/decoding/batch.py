"""What every decoder shares at run time: the result of a decode and small batched helpers (torch).

The decoders (semi_ar.py, multi_block.py, prefix_cache.py) import from here and from spec.py (the knobs), never
from each other's modules, so the package has no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeResult:
    """Outcome of `decode` for a batch of B prompts of length P with G generated positions."""

    sequences: torch.Tensor  # (B, P+G) long: prompt followed by the generation region
    nfe: torch.Tensor  # (B,) long: forward passes each sample took part in
    unmask_step: torch.Tensor  # (B, G) long: 0-based own forward index at which a position was revealed
    tokens: torch.Tensor  # (B,) long: generated tokens before the first EOS
    truncated: torch.Tensor | None = None  # (B,) bool: stopped by max_forwards with MASKs left
    forwarded: torch.Tensor | None = None  # (B,) long: positions run through the model (rule "d3llm" only)


def apply_early_stop(gen: torch.Tensor, unmask: torch.Tensor, step: torch.Tensor, mask_id: int, eos_id: int) -> None:
    """In place: overwrite everything after each row's first revealed EOS with EOS (d3LLM early stop).

    gen, unmask: (A, G); step: (A,) the row's current forward index, recorded for positions that were MASK.
    """
    is_eos = gen == eos_id  # (A, G); a MASK is never EOS, so these are all revealed
    has_eos = is_eos.any(dim=-1, keepdim=True)  # (A, 1)
    first = is_eos.to(torch.uint8).argmax(dim=-1, keepdim=True)  # (A, 1), 0 when there is none
    positions = torch.arange(gen.shape[-1], device=gen.device)[None, :]  # (1, G)
    after = has_eos & (positions > first)  # (A, G)
    newly = after & (gen == mask_id)  # (A, G) revealed by this rule right now
    unmask.copy_(torch.where(newly, step[:, None], unmask))
    gen.masked_fill_(after, eos_id)


def banned_ids(model) -> list[int]:
    """Ids a decoder never predicts: MASK, and PAD unless it doubles as EOS (banning it would forbid stopping)."""
    return [model.mask_token_id] if model.pad_token_id == model.eos_token_id else [model.mask_token_id,
                                                                                   model.pad_token_id]


def takes_keep_count(model, method: str = "logits") -> bool:
    """Whether model.<method> accepts `keep_count` (our adapter does; simple test doubles may not)."""
    import inspect

    params = inspect.signature(getattr(model, method)).parameters
    return "keep_count" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def host_values(*values: torch.Tensor) -> list[int]:
    """Scalars (0-dim) or vectors of ints read in one device -> host copy: a decoder's one sync per forward."""
    flat = torch.cat([v.reshape(-1).long() for v in values])
    return flat.tolist()


def select_rows(t: torch.Tensor, where: torch.Tensor, count: int | None) -> torch.Tensor:
    """t[where] for a bool mask `where` over t's leading dims; by index when its True count is known (no sync)."""
    if count is None:
        return t[where]
    flat = t.reshape(-1, *t.shape[where.dim():])
    return flat.index_select(0, where.reshape(-1).nonzero_static(size=count).squeeze(1))


def active_index(active: torch.Tensor, count: int, batch: int) -> tuple[torch.Tensor, bool]:
    """(indices (A,) of the True rows of active (B,), whether that is every row), A = count known on the host:
    no host sync (nonzero would need one to size its output)."""
    if count == batch:
        return torch.arange(batch, device=active.device), True
    return active.nonzero_static(size=count).squeeze(1), False


def active_rows(t: torch.Tensor, idx: torch.Tensor, everyone: bool) -> torch.Tensor:
    """The rows `idx` of t as a copy, or t itself when every row is active (updated in place, no copy back)."""
    return t if everyone else t.index_select(0, idx)


def build_attention(prompt_attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """(B, P+G) mask: the prompt's own mask followed by ones for the generation region, or None.

    None also when the prompts hold no padding (one host read per decode call): transformers' SDPA path skips
    an all-ones mask anyway, but only after reading it on the host at every forward.
    """
    if prompt_attention_mask is None or bool(prompt_attention_mask.all()):
        return None
    ones = torch.ones(prompt_attention_mask.shape[0], gen_length, dtype=prompt_attention_mask.dtype,
                      device=prompt_attention_mask.device)
    return torch.cat([prompt_attention_mask, ones], dim=1)
