"""d3LLM entropy-based multi-block decoding (method.md §5.2), batched with per-sample block states.

Several blocks decode at once: a new block opens when the last one reaches `block_add_threshold` progress
(or is complete), and becomes *fully active* once its predecessor reaches `decoded_token_threshold`. Every
masked position of an opened block whose entropy is below τ is accepted; the first fully-active block that
still has masks always makes progress (its lowest-entropy position is accepted if nothing there passed).
With block_add_threshold = decoded_token_threshold = 1 this is exactly single-block threshold decoding.
The model family supplies the official acceptance rule (`lm.decode_defaults`, used when accept_global_best is
None): LLaDA also accepts the global minimum-entropy candidate and passes H <= τ; Dream passes H < τ only.

    spec = DecodeSpec(rule="d3llm", threshold=0.5, block_add_threshold=0.1, decoded_token_threshold=0.95)
    result = decode(lm, prompt_ids, spec)      # dispatches here

Block state per sample: `opened` (B, N) and `fully` (B, N) bool; progress is recomputed from the masks each step.
With `kv_cache` the prompt and settled leading blocks are served from a prefix KV cache with delayed caching and
periodic refresh (decoding/prefix_cache.py; `cache_plan` picks our forward plan or the family's official one);
without it every forward runs the whole sequence.
"""

from __future__ import annotations

from dataclasses import astuple

import torch
import torch.nn.functional as F

from d3llm_pipeline.decoding.metrics import generated_token_counts
from d3llm_pipeline.decoding.noise import gumbel_noise
from d3llm_pipeline.decoding.prefix_cache import PrefixCacheState, plan_forward, plan_forward_reference
from d3llm_pipeline.decoding.selection import (
    Prediction,
    passes_threshold,
    predict,
    scatter_prediction,
    select_vanilla,
)
from d3llm_pipeline.decoding.spec import (
    DecodeResult,
    DecodeSpec,
    active_rows,
    apply_early_stop,
    banned_ids,
    build_attention,
    decode_defaults,
)


def _update_blocks(gen_mask: torch.Tensor, gen: torch.Tensor, opened: torch.Tensor, fully: torch.Tensor,
                   spec: DecodeSpec, eos_id: int) -> torch.Tensor:
    """In place: promote blocks to fully active and open at most one new block per row. Returns masks (A, N)."""
    rows, n_blocks = opened.shape
    masks = gen_mask.view(rows, n_blocks, spec.block_size).sum(-1)  # (A, N) masked positions per block
    progress = 1.0 - masks.float() / spec.block_size  # (A, N)
    prev = torch.cat([torch.ones_like(progress[:, :1]), progress[:, :-1]], dim=1)  # the prompt counts as done
    fully |= opened & (prev >= spec.decoded_token_threshold)
    n_open = opened.sum(-1)  # (A,) blocks open so far (always >= 1)
    last = (n_open - 1).clamp(min=0)[:, None]
    last_progress, last_masks = progress.gather(1, last).squeeze(1), masks.gather(1, last).squeeze(1)
    can_open = (n_open < n_blocks) & ((last_progress >= spec.block_add_threshold) | (last_masks == 0))
    if spec.early_stop:  # no new blocks once an EOS has been decoded (everything after it is EOS)
        can_open &= ~(gen == eos_id).any(-1)
    new = F.one_hot(n_open.clamp(max=n_blocks - 1), n_blocks).bool() & can_open[:, None]  # (A, N)
    opened |= new
    fully |= new & (last_progress >= spec.decoded_token_threshold)[:, None]
    return masks


def _accept(entropy: torch.Tensor, cand: torch.Tensor, fully: torch.Tensor, masks: torch.Tensor,
            spec: DecodeSpec, global_best: bool, inclusive: bool) -> torch.Tensor:
    """Accepted positions (A, E): entropy < τ (<= τ if inclusive), plus forced progress in the first
    fully-active unfinished block."""
    accept = cand & passes_threshold(entropy, spec.threshold, higher_better=False, inclusive=inclusive)
    if global_best:  # LLaDA variant: the global minimum-entropy candidate is always accepted
        accept |= select_vanilla(entropy, cand, 1, higher_better=False)
    first = fully & (masks > 0)  # (A, N)
    has_first = first.any(-1)
    first_idx = first.to(torch.uint8).argmax(-1)  # (A,)
    block_of = torch.arange(entropy.shape[1], device=cand.device) // spec.block_size  # (E,)
    in_first = (block_of[None, :] == first_idx[:, None]) & has_first[:, None]  # (A, E)
    stalled = has_first & ~(accept & in_first).any(-1)  # (A,)
    forced = select_vanilla(entropy, cand & in_first, 1, higher_better=False)
    return accept | (forced & stalled[:, None])


def _predict_groups(groups, cand: torch.Tensor, step: torch.Tensor, sample_keys: torch.Tensor, spec: DecodeSpec,
                    banned: list[int]) -> Prediction:
    """Token, confidence, entropy (A, E) from each group's candidate logits; entropy +inf off the candidates.

    groups: [(indices into the A rows or None for all of them, logits (n_g, V) of those rows' candidates)].
    """
    parts = []
    for g, logits in groups:
        sub_cand = cand if g is None else cand.index_select(0, g)  # (A_g, E)
        gumbel = None
        if spec.temperature > 0:  # keyed by (seed, sample, own step, position, token): batch-independent
            sub_step, sub_keys = (step, sample_keys) if g is None else (step[g], sample_keys[g])
            positions = torch.arange(cand.shape[1], device=cand.device).expand(sub_cand.shape[0], -1)
            gumbel = gumbel_noise(spec.seed, sub_keys, sub_step, positions, logits.shape[-1])[sub_cand]
        pred = predict(logits, banned_ids=banned, temperature=spec.temperature, gumbel=gumbel, consume=True,
                       dtype=spec.entropy_dtype)
        parts.append((g, scatter_prediction(pred, sub_cand)))
    if len(parts) == 1 and parts[0][0] is None:
        return parts[0][1]
    fields = [torch.empty(cand.shape, dtype=t.dtype, device=cand.device) for t in astuple(parts[0][1])]
    for g, pred in parts:  # every row belongs to exactly one group
        for target, source in zip(fields, astuple(pred), strict=True):
            target.index_copy_(0, g, source)
    return Prediction(*fields)


def _cached_forward(model, x, attn, keep, masks, step, prompt_len, spec: DecodeSpec, cache: PrefixCacheState,
                    rows: torch.Tensor):
    """Plan this forward per row (decode.cache_plan) and run it through the cache; returns the logit groups."""
    it = step + 1  # the rows' own 1-based forward index
    past_stamps, length = cache.completed_at.index_select(0, rows), cache.length.index_select(0, rows)
    if spec.cache_plan == "reference":
        completed_at, *plan = plan_forward_reference(
            masks, past_stamps, length, cache.phys.index_select(0, rows), it, prompt_len, spec.block_size,
            spec.cache_delay_iter, spec.refresh_interval, decode_defaults(model).cache_scan_stops_at_stabilising)
    else:
        completed_at, target, full = plan_forward(masks, past_stamps, length, it, prompt_len, spec.block_size,
                                                  spec.cache_delay_iter, spec.refresh_interval)
        plan = PrefixCacheState.ours(target, full, length)
    cache.completed_at.index_copy_(0, rows, completed_at)
    return cache.forward(model, x, attn, keep, rows, *plan, own_first=spec.cache_plan == "reference")


def _multi_block_step(model, x, attn, step, unmask, opened, fully, prompt_len, spec, sample_keys,
                      cache: PrefixCacheState | None, rows: torch.Tensor) -> None:
    """One forward over the active rows; updates x, unmask, opened, fully (all (A, ...)) and the cache in place.

    rows: (A,) the active rows' indices into the batch (the cache is indexed by them).
    """
    mask_id, eos_id = model.mask_token_id, model.eos_token_id
    gen = x[:, prompt_len:]  # (A, G) view
    gen_mask = gen == mask_id
    masks = _update_blocks(gen_mask, gen, opened, fully, spec, eos_id)  # (A, N)
    end = int(opened.sum(-1).max()) * spec.block_size  # host sync: nothing beyond the last open block is a candidate
    cand = (gen_mask & opened.repeat_interleave(spec.block_size, dim=1))[:, :end]  # (A, E)
    keep = torch.zeros_like(x, dtype=torch.bool)  # (A, P+G): logits only where a token can be accepted
    keep[:, prompt_len : prompt_len + end] = cand
    if cache is None:
        groups = [(None, model.logits(x, attn, keep=keep))]  # (n, V), whole sequence forwarded
    else:
        groups = _cached_forward(model, x, attn, keep, masks, step, prompt_len, spec, cache, rows)
    pred = _predict_groups(groups, cand, step, sample_keys, spec, banned_ids(model))  # fields (A, E)
    traits = decode_defaults(model)
    accept = _accept(pred.entropy, cand, fully, masks, spec, spec.global_best(model), traits.inclusive_threshold)
    gen[:, :end] = torch.where(accept, pred.tokens.to(gen.dtype), gen[:, :end])
    unmask[:, :end] = torch.where(accept, step[:, None], unmask[:, :end])
    if spec.early_stop:
        apply_early_stop(gen, unmask, step, mask_id, eos_id)


@torch.no_grad()
def decode_multi_block(model, prompt_ids: torch.Tensor, spec: DecodeSpec,
                       prompt_attention_mask: torch.Tensor | None = None,
                       sample_keys: torch.Tensor | None = None) -> DecodeResult:
    """Multi-block decoding of `spec.gen_length` tokens after each prompt (B, P); see the module docstring."""
    batch, prompt_len = prompt_ids.shape
    device, mask_id = prompt_ids.device, model.mask_token_id
    n_blocks = spec.gen_length // spec.block_size
    x = torch.cat([prompt_ids, torch.full((batch, spec.gen_length), mask_id, dtype=prompt_ids.dtype,
                                          device=device)], dim=1)  # (B, P+G)
    attn = build_attention(prompt_attention_mask, spec.gen_length)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    unmask_step = torch.full((batch, spec.gen_length), -1, dtype=torch.long, device=device)
    opened = torch.zeros(batch, n_blocks, dtype=torch.bool, device=device)
    opened[:, 0] = True  # block 1 opens at once and is fully active: its predecessor (the prompt) is done
    fully = opened.clone()
    keys = (torch.arange(batch, device=device) if sample_keys is None else sample_keys.to(device)).long()
    cache = PrefixCacheState.empty(batch, n_blocks, device) if spec.kv_cache else None

    for _ in range(spec.forward_cap):
        idx = (x[:, prompt_len:] == mask_id).any(-1).nonzero().squeeze(-1)  # (A,) one host sync
        if idx.numel() == 0:
            break
        everyone = idx.numel() == batch  # then work on the batch tensors in place: no gather / scatter back
        rows = [active_rows(t, idx, everyone) for t in (x, unmask_step, opened, fully)]
        rows_attn = active_rows(attn, idx, everyone) if attn is not None else None
        step = nfe.clone() if everyone else nfe.index_select(0, idx)
        _multi_block_step(model, rows[0], rows_attn, step, rows[1], rows[2], rows[3], prompt_len, spec,
                          active_rows(keys, idx, everyone), cache, idx)
        nfe.index_add_(0, idx, torch.ones_like(idx))
        if not everyone:
            for target, source in zip((x, unmask_step, opened, fully), rows, strict=True):
                target.index_copy_(0, idx, source)

    gen = x[:, prompt_len:]
    return DecodeResult(sequences=x, nfe=nfe, unmask_step=unmask_step,
                        tokens=generated_token_counts(gen, model.eos_token_id), truncated=(gen == mask_id).any(-1),
                        forwarded=nfe * x.shape[1] if cache is None else cache.forwarded)
