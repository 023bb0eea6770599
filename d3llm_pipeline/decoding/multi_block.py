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

from d3llm_pipeline.decoding.batch import (
    DecodeResult,
    active_index,
    active_rows,
    apply_early_stop,
    banned_ids,
    build_attention,
    host_values,
    takes_keep_count,
)
from d3llm_pipeline.decoding.metrics import generated_token_counts
from d3llm_pipeline.decoding.noise import gumbel_noise_at
from d3llm_pipeline.decoding.prefix_cache import PrefixCacheState, plan_forward, plan_forward_reference
from d3llm_pipeline.decoding.selection import (
    Prediction,
    ids_tensor,
    passes_threshold,
    predict,
    scatter_prediction,
    select_vanilla,
)
from d3llm_pipeline.decoding.spec import DecodeSpec, decode_defaults


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
    # one_hot(n_open, N) without F.one_hot, which reads its input's range on the host
    new = (torch.arange(n_blocks, device=opened.device)[None, :] == n_open.clamp(max=n_blocks - 1)[:, None]) \
        & can_open[:, None]  # (A, N)
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


def _first_open_blocks(spec: DecodeSpec, n_blocks: int) -> int:
    """Blocks open in the first step (what `_update_blocks` gives for an all-MASK generation region): block 1,
    and block 2 as well when block_add_threshold <= 0 (progress 0 already reaches it)."""
    return 2 if n_blocks > 1 and spec.block_add_threshold <= 0 else 1


def _predict_groups(groups, cand: torch.Tensor, step: torch.Tensor, sample_keys: torch.Tensor, spec: DecodeSpec,
                    banned) -> Prediction:
    """Token, confidence, entropy (A, E) from each group's candidate logits; entropy +inf off the candidates.

    groups: [(indices into the A rows or None for all of them, logits (n_g, V) of those rows' candidates,
    n_g if known on the host or None)].
    """
    parts = []
    for g, logits, count in groups:
        sub_cand = cand if g is None else cand.index_select(0, g)  # (A_g, E)
        gumbel = None
        if spec.temperature > 0:  # keyed by (seed, sample, own step, position, token): batch-independent
            sub_step, sub_keys = (step, sample_keys) if g is None else (step[g], sample_keys[g])
            positions = torch.arange(cand.shape[1], device=cand.device).expand(sub_cand.shape[0], -1)
            gumbel = gumbel_noise_at(spec.seed, sub_keys, sub_step, positions, sub_cand, count, logits.shape[-1])
        pred = predict(logits, banned_ids=banned, temperature=spec.temperature, gumbel=gumbel, consume=True,
                       dtype=spec.entropy_dtype)
        parts.append((g, scatter_prediction(pred, sub_cand, count)))
    if len(parts) == 1 and parts[0][0] is None:
        return parts[0][1]
    fields = [torch.empty(cand.shape, dtype=t.dtype, device=cand.device) for t in astuple(parts[0][1])]
    for g, pred in parts:  # every row belongs to exactly one group
        for target, source in zip(fields, astuple(pred), strict=True):
            target.index_copy_(0, g, source)
    return Prediction(*fields)


def _plan_cache(model, masks, nfe, prompt_len, spec: DecodeSpec, cache: PrefixCacheState
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plan every row's next forward (decode.cache_plan): (start, length, phys, held) (B,) each; stamps
    completions into the cache. Rows that are finished are planned too and never run (their plan is unused)."""
    it = nfe + 1  # the rows' own 1-based forward index
    if spec.cache_plan == "reference":
        completed_at, *plan = plan_forward_reference(
            masks, cache.completed_at, cache.length, cache.phys, it, prompt_len, spec.block_size,
            spec.cache_delay_iter, spec.refresh_interval, decode_defaults(model).cache_scan_stops_at_stabilising)
    else:
        completed_at, target, full = plan_forward(masks, cache.completed_at, cache.length, it, prompt_len,
                                                  spec.block_size, spec.cache_delay_iter, spec.refresh_interval)
        plan = PrefixCacheState.ours(target, full, cache.length)
    cache.completed_at.copy_(completed_at)
    start = plan[0]
    return (*plan, torch.where(start > 0, cache.phys, torch.zeros_like(start)))


def _multi_block_step(model, x, attn, step, unmask, fully, masks, cand, n_cand, prompt_len, spec, sample_keys,
                      banned, cache_call=None) -> None:
    """One forward over the active rows; updates x and unmask (A, ...) in place (and the cache via cache_call).

    masks: (A, N) MASKs per block and cand: (A, E) the candidates (masked positions of the open blocks), both
    after this step's block update; n_cand: cand.sum() if known on the host (no host sync then) or None.
    cache_call(keep) -> the logit groups of a cached forward, or None to forward the whole sequence.
    """
    mask_id, eos_id = model.mask_token_id, model.eos_token_id
    gen = x[:, prompt_len:]  # (A, G) view
    end = cand.shape[1]
    keep = torch.zeros_like(x, dtype=torch.bool)  # (A, P+G): logits only where a token can be accepted
    keep[:, prompt_len : prompt_len + end] = cand
    if cache_call is None:
        counted = {"keep_count": n_cand} if n_cand is not None else {}
        groups = [(None, model.logits(x, attn, keep=keep, **counted), n_cand)]  # (n, V), whole sequence
    else:
        groups = cache_call(keep)
    pred = _predict_groups(groups, cand, step, sample_keys, spec, banned)  # fields (A, E)
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
    """Multi-block decoding of `spec.gen_length` tokens after each prompt (B, P); see the module docstring.

    One host sync per forward: each iteration first updates every row's blocks (and cache plan), then copies
    the few numbers the host needs (rows still active, candidates, open blocks; with the cache each row's plan)
    in one go. The first iteration needs none: every row starts in the same state.
    """
    batch, prompt_len = prompt_ids.shape
    device, mask_id = prompt_ids.device, model.mask_token_id
    n_blocks = spec.gen_length // spec.block_size
    x = torch.cat([prompt_ids, torch.full((batch, spec.gen_length), mask_id, dtype=prompt_ids.dtype,
                                          device=device)], dim=1)  # (B, P+G)
    attn = build_attention(prompt_attention_mask, spec.gen_length)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    unmask_step = torch.full((batch, spec.gen_length), -1, dtype=torch.long, device=device)
    opened = torch.zeros(batch, n_blocks, dtype=torch.bool, device=device)
    opened[:, 0].fill_(True)  # block 1 opens at once and is fully active: its predecessor (the prompt) is done
    fully = opened.clone()
    keys = (torch.arange(batch, device=device) if sample_keys is None else sample_keys.to(device)).long()
    cache = PrefixCacheState.empty(batch, n_blocks, device) if spec.kv_cache else None
    counted = takes_keep_count(model, "logits" if cache is None else "forward_kv")
    banned = ids_tensor(banned_ids(model), device)

    for it in range(spec.forward_cap):
        gen = x[:, prompt_len:]
        gen_mask = gen == mask_id  # (B, G)
        masks = _update_blocks(gen_mask, gen, opened, fully, spec, model.eos_token_id)  # (B, N), every row
        n_open = opened.sum(-1)  # (B,)
        cand_all = gen_mask & opened.repeat_interleave(spec.block_size, dim=1)  # (B, G)
        plan = _plan_cache(model, masks, nfe, prompt_len, spec, cache) if cache is not None else None
        active = None
        if it == 0:  # known on the host: every row active, the same blocks open, one full forward (cache)
            n_active, max_open = batch, _first_open_blocks(spec, n_blocks)
            counts = [max_open * spec.block_size] * batch
            host_plan = [[0] * batch, [0] * batch, [True] * batch]  # start, held, new K/V needed (harmless)
        else:  # the one host sync of the iteration
            active = gen_mask.any(-1)  # (B,)
            per_row = [active, cand_all.sum(-1), torch.where(active, n_open, 0)]
            values = host_values(*per_row, *(plan[0], plan[3], plan[2] > plan[3]) if plan is not None else ())
            cols = [values[i * batch : (i + 1) * batch] for i in range(len(values) // batch)]
            flags, counts, opens = cols[:3]
            n_active, max_open = sum(flags), max(opens)
            if plan is not None:
                host_plan = [[c for c, f in zip(col, flags, strict=True) if f] for col in cols[3:]]
            counts = [c for c, f in zip(counts, flags, strict=True) if f]
        if n_active == 0:
            break
        idx, everyone = active_index(active, n_active, batch) if it > 0 else (torch.arange(batch, device=device),
                                                                              True)
        end = max_open * spec.block_size  # nothing beyond the last open block is a candidate
        rows = [active_rows(t, idx, everyone) for t in (x, unmask_step, fully, masks, cand_all[:, :end])]
        rows_attn = active_rows(attn, idx, everyone) if attn is not None else None
        step = nfe.clone() if everyone else nfe.index_select(0, idx)
        cache_call = None
        if cache is not None:
            sub = [active_rows(t, idx, everyone) for t in plan[:3]]

            def cache_call(keep, x=rows[0], attn=rows_attn, idx=idx, sub=sub, host=(*host_plan, counts)):
                return cache.forward(model, x, attn, keep, idx, *sub, own_first=spec.cache_plan == "reference",
                                     host=host if counted else None)
        _multi_block_step(model, rows[0], rows_attn, step, rows[1], rows[2], rows[3], rows[4],
                          sum(counts) if counted else None, prompt_len, spec, active_rows(keys, idx, everyone),
                          banned, cache_call)
        nfe.index_add_(0, idx, torch.ones_like(idx))
        if not everyone:
            for target, source in zip((x, unmask_step), rows[:2], strict=True):
                target.index_copy_(0, idx, source)

    gen = x[:, prompt_len:]
    return DecodeResult(sequences=x, nfe=nfe, unmask_step=unmask_step,
                        tokens=generated_token_counts(gen, model.eos_token_id), truncated=(gen == mask_id).any(-1),
                        forwarded=nfe * x.shape[1] if cache is None else cache.forwarded)
