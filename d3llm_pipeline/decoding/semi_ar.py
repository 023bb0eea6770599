"""Batched semi-autoregressive block decoding for masked-diffusion LMs (LLaDA / Fast-dLLM / d3LLM baselines).

The generation region (gen_length MASK tokens appended to the prompt) is split into blocks of block_size.
Every sample works on its own *current block*, the first block that still holds a MASK, and each forward
pass reveals some of that block's masked positions according to the selection rule (see `selection`):

* "vanilla": the `tokens_per_step` best candidates per step;
* "threshold": every candidate whose score clears `threshold`, plus always the best one.

With `early_stop` (the d3LLM rule) everything after the first revealed EOS is filled with EOS at once, so a
sample stops paying for forwards as soon as its answer is complete. Finished samples are dropped from the
model batch, so `nfe` is the number of forwards each sample really needed.

    from d3llm_pipeline.decoding.semi_ar import DecodeSpec, decode
    spec = DecodeSpec(gen_length=64, block_size=16, rule="threshold", score="entropy", threshold=0.4)
    result = decode(lm, prompt_ids, spec)              # lm: a DiffusionLM
    result.sequences  # (B, P+G)   result.nfe  # (B,)   result.unmask_step  # (B, G)   result.tokens  # (B,)

The loop is vectorised over samples and positions; the only host syncs per iteration are gathering the
indices of the still-active samples (which also decides whether to stop) and, inside the model call, selecting
the candidate positions whose logits are computed (`keep`: the LM head runs on those alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d3llm_pipeline.decoding.metrics import generated_token_counts
from d3llm_pipeline.decoding.noise import gumbel_noise
from d3llm_pipeline.decoding.selection import predict, scatter_prediction, select_tokens
from d3llm_pipeline.models.adapter import DiffusionLM


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode: region and block sizes, selection rule and stopping behaviour."""

    gen_length: int = 64
    block_size: int = 16
    rule: str = "threshold"  # "vanilla" | "threshold"
    score: str = "entropy"  # "confidence" (higher is better) | "entropy" (lower is better)
    threshold: float = 0.4
    tokens_per_step: int = 1  # vanilla only
    early_stop: bool = True
    max_forwards: int | None = None  # safety cap on forwards per sample; None -> 2 * gen_length
    temperature: float = 0.0  # 0 = argmax; > 0 samples from softmax(logits / T) with counter-based noise
    seed: int = 0  # noise seed (used only when temperature > 0)
    # rule "d3llm" (multi-block, decoding.multi_block): open a block at this progress of the last one ...
    block_add_threshold: float = 0.1
    # ... and make it fully active (forced progress) once its predecessor reaches this progress
    decoded_token_threshold: float = 0.95
    accept_global_best: bool = False  # d3LLM's LLaDA variant: always accept the global min-entropy candidate
    kv_cache: bool = False  # rule "d3llm": prefix KV cache with delayed caching and refresh (decoding.prefix_cache)
    cache_delay_iter: int = 2  # d: a completed block joins the cache this many iterations after completing
    refresh_interval: int | None = None  # R: a full forward refreshes the cache every R iterations; None = never

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def forward_cap(self) -> int:
        return self.max_forwards if self.max_forwards is not None else 2 * self.gen_length


@dataclass
class DecodeResult:
    """Outcome of `decode` for a batch of B prompts of length P with G generated positions."""

    sequences: torch.Tensor  # (B, P+G) long: prompt followed by the generation region
    nfe: torch.Tensor  # (B,) long: forward passes each sample took part in
    unmask_step: torch.Tensor  # (B, G) long: 0-based own forward index at which a position was revealed
    tokens: torch.Tensor  # (B,) long: generated tokens before the first EOS
    truncated: torch.Tensor | None = None  # (B,) bool: stopped by max_forwards with MASKs left
    forwarded: torch.Tensor | None = None  # (B,) long: positions run through the model (rule "d3llm" only)


def _current_block_positions(gen_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Generation-region positions (A, block_size) of each row's first block that still holds a MASK.

    gen_mask: (A, G) bool, every row has at least one True (only active rows are passed in).
    """
    rows, gen_len = gen_mask.shape
    block_has_mask = gen_mask.view(rows, gen_len // block_size, block_size).any(dim=-1)  # (A, NB)
    # argmax returns the first maximum, i.e. the first block with a MASK.
    current = block_has_mask.to(torch.uint8).argmax(dim=-1)  # (A,)
    offsets = torch.arange(block_size, device=gen_mask.device)  # (K,)
    return current[:, None] * block_size + offsets[None, :]  # (A, K)


def _apply_early_stop(
    gen: torch.Tensor, unmask: torch.Tensor, step: torch.Tensor, mask_id: int, eos_id: int
) -> None:
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


def banned_ids(model: DiffusionLM) -> list[int]:
    """Ids a decoder never predicts: MASK, and PAD unless it doubles as EOS (banning it would forbid stopping)."""
    return [model.mask_token_id] if model.pad_token_id == model.eos_token_id else [model.mask_token_id,
                                                                                   model.pad_token_id]


def active_rows(t: torch.Tensor, idx: torch.Tensor, everyone: bool) -> torch.Tensor:
    """The rows `idx` of t as a copy, or t itself when every row is active (updated in place, no copy back)."""
    return t if everyone else t.index_select(0, idx)


def _build_attention(prompt_attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """(B, P+G) mask: the prompt's own mask followed by ones for the generation region, or None."""
    if prompt_attention_mask is None:
        return None
    ones = torch.ones(
        prompt_attention_mask.shape[0],
        gen_length,
        dtype=prompt_attention_mask.dtype,
        device=prompt_attention_mask.device,
    )
    return torch.cat([prompt_attention_mask, ones], dim=1)


def _step(
    model: DiffusionLM,
    x: torch.Tensor,
    attn: torch.Tensor | None,
    step: torch.Tensor,
    unmask: torch.Tensor,
    prompt_len: int,
    spec: DecodeSpec,
    sample_keys: torch.Tensor,
) -> None:
    """One forward pass over the active rows x (A, P+G); updates x and unmask (A, G) in place.

    step: (A,) each row's own 0-based forward index for this pass; sample_keys: (A,) noise keys.
    """
    mask_id, eos_id = model.mask_token_id, model.eos_token_id
    gen = x[:, prompt_len:]  # (A, G) view into x
    gen_mask = gen == mask_id  # (A, G)
    pos = _current_block_positions(gen_mask, spec.block_size)  # (A, K)

    candidates = gen_mask.gather(1, pos)  # (A, K)
    # Logits only where a token can be accepted: the current block's masked positions, flattened (n, V).
    keep = torch.zeros_like(x, dtype=torch.bool)  # (A, P+G)
    keep[:, prompt_len:].scatter_(1, pos, candidates)
    flat = model.logits(x, attn, keep=keep)  # (n, V), row-major order of the candidates
    vocab = flat.shape[-1]
    gumbel = None
    if spec.temperature > 0:  # noise keyed by (seed, sample, own step, position, token): batch-independent
        gumbel = gumbel_noise(spec.seed, sample_keys, step, pos, vocab)[candidates]  # (n, V)
    pred = scatter_prediction(
        predict(flat, banned_ids=banned_ids(model), temperature=spec.temperature, gumbel=gumbel, consume=True),
        candidates,
    )  # fields (A, K)
    accept = select_tokens(
        pred, candidates, spec.rule, spec.score, spec.threshold, spec.tokens_per_step
    )  # (A, K) bool, subset of candidates
    new_tokens = torch.where(accept, pred.tokens.to(gen.dtype), gen.gather(1, pos))  # (A, K)
    gen.scatter_(1, pos, new_tokens)
    new_steps = torch.where(accept, step[:, None], unmask.gather(1, pos))  # (A, K)
    unmask.scatter_(1, pos, new_steps)

    if spec.early_stop:
        _apply_early_stop(gen, unmask, step, mask_id, eos_id)


@torch.no_grad()
def decode(
    model: DiffusionLM,
    prompt_ids: torch.Tensor,
    spec: DecodeSpec,
    prompt_attention_mask: torch.Tensor | None = None,
    sample_keys: torch.Tensor | None = None,
) -> DecodeResult:
    """Semi-autoregressive block decoding of `spec.gen_length` tokens after each prompt (B, P).

    Only rows that still hold a MASK are sent to the model, so `nfe` counts each sample's own forwards.
    Stops when every sample is finished or after `spec.forward_cap` iterations (MASKs are then left in place
    and `truncated` marks the affected samples). `sample_keys` (B,) identify samples for temperature noise
    (default: their batch index); pass stable ids (e.g. dataset row ids) to make sampling batch-independent.
    """
    if spec.rule == "d3llm":
        from d3llm_pipeline.decoding.multi_block import decode_multi_block

        return decode_multi_block(model, prompt_ids, spec, prompt_attention_mask, sample_keys)
    assert prompt_ids.dim() == 2, "prompt_ids must be (B, P)"
    assert spec.gen_length % spec.block_size == 0, "gen_length must be a multiple of block_size"
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    mask_id = model.mask_token_id

    gen_init = torch.full((batch, spec.gen_length), mask_id, dtype=prompt_ids.dtype, device=device)
    x = torch.cat([prompt_ids, gen_init], dim=1)  # (B, P+G)
    attn = _build_attention(prompt_attention_mask, spec.gen_length)  # (B, P+G) or None
    nfe = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    unmask_step = torch.full((batch, spec.gen_length), -1, dtype=torch.long, device=device)  # (B, G)
    if sample_keys is None:
        sample_keys = torch.arange(batch, device=device)
    sample_keys = sample_keys.to(device=device, dtype=torch.long)  # (B,)

    for _ in range(spec.forward_cap):
        active = (x[:, prompt_len:] == mask_id).any(dim=-1)  # (B,)
        idx = active.nonzero().squeeze(-1)  # (A,); the one host sync of the iteration
        if idx.numel() == 0:
            break
        everyone = idx.numel() == batch  # then work on the batch tensors in place: no gather / scatter back
        rows_x = active_rows(x, idx, everyone)  # (A, P+G), updated in place below
        rows_unmask = active_rows(unmask_step, idx, everyone)  # (A, G)
        rows_attn = active_rows(attn, idx, everyone) if attn is not None else None
        step = nfe.clone() if everyone else nfe.index_select(0, idx)  # (A,) own forward index of this pass
        keys = active_rows(sample_keys, idx, everyone)
        _step(model, rows_x, rows_attn, step, rows_unmask, prompt_len, spec, keys)
        nfe.index_add_(0, idx, torch.ones_like(idx))
        if not everyone:
            x.index_copy_(0, idx, rows_x)
            unmask_step.index_copy_(0, idx, rows_unmask)

    gen = x[:, prompt_len:]  # (B, G)
    return DecodeResult(
        sequences=x,
        nfe=nfe,
        unmask_step=unmask_step,
        tokens=generated_token_counts(gen, model.eos_token_id),
        truncated=(gen == mask_id).any(dim=-1),
    )
