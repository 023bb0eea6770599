"""Batched semi-autoregressive block decoding for masked-diffusion LMs (LLaDA / Fast-dLLM / d3LLM baselines).

The generation region (gen_length MASK tokens appended to the prompt) is split into blocks of block_size.
Every sample works on its own *current block*, the first block that still holds a MASK, and each forward
pass reveals some of that block's masked positions according to the selection rule (see `selection`):

* "vanilla": the `tokens_per_step` best candidates per step;
* "threshold": every candidate whose score clears `threshold`, plus always the best one (a score equal to it
  passes where the family's official decoder lets it: LLaDA H <= τ, Dream H < τ; `lm.decode_defaults`).

With `early_stop` (the d3LLM rule) everything after the first revealed EOS is filled with EOS at once, so a
sample stops paying for forwards as soon as its answer is complete. Finished samples are dropped from the
model batch, so `nfe` is the number of forwards each sample really needed. rule "d3llm" dispatches to
multi_block.py; the knobs (`DecodeSpec`) and the helpers every decoder shares live in spec.py.

    from d3llm_pipeline.decoding import DecodeSpec, decode
    spec = DecodeSpec(gen_length=64, block_size=16, rule="threshold", score="entropy", threshold=0.4)
    result = decode(lm, prompt_ids, spec)              # lm: a DiffusionLM
    result.sequences  # (B, P+G)   result.nfe  # (B,)   result.unmask_step  # (B, G)   result.tokens  # (B,)

The loop is vectorised over samples and positions and makes one host sync per forward: after each step a
single copy of two numbers (rows still active, candidate positions of their current blocks) tells whether to
stop and sizes the next step: the active rows' indices and the LM head's rows (`keep`: it runs on the candidates
alone) are then taken by index, never by a boolean mask. The first step needs no sync: every row is active with a
whole block of MASKs. tests/unit/test_host_syncs.py counts them (decoding/sync_counter.py).
"""

from __future__ import annotations

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
from d3llm_pipeline.decoding.lm import DiffusionLM
from d3llm_pipeline.decoding.metrics import generated_token_counts
from d3llm_pipeline.decoding.multi_block import decode_multi_block
from d3llm_pipeline.decoding.noise import gumbel_noise_at
from d3llm_pipeline.decoding.selection import ids_tensor, predict, scatter_prediction, select_tokens
from d3llm_pipeline.decoding.spec import DecodeSpec, decode_defaults


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


def _next_step(gen: torch.Tensor, mask_id: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(active (B,) rows that still hold a MASK, total MASKs in their current blocks ()) on the device."""
    rows, gen_len = gen.shape
    per_block = (gen == mask_id).view(rows, gen_len // block_size, block_size).sum(-1)  # (B, NB)
    current = (per_block > 0).to(torch.uint8).argmax(dim=-1, keepdim=True)  # (B, 1) first block with a MASK
    return per_block.sum(-1) > 0, per_block.gather(1, current).sum()


def _step(
    model: DiffusionLM,
    x: torch.Tensor,
    attn: torch.Tensor | None,
    step: torch.Tensor,
    unmask: torch.Tensor,
    prompt_len: int,
    spec: DecodeSpec,
    sample_keys: torch.Tensor,
    n_candidates: int | None = None,
    banned: torch.Tensor | None = None,
) -> None:
    """One forward pass over the active rows x (A, P+G); updates x and unmask (A, G) in place.

    step: (A,) each row's own 0-based forward index for this pass; sample_keys: (A,) noise keys; n_candidates:
    the number of masked positions in the rows' current blocks, if known (then the step makes no host sync).
    """
    mask_id, eos_id = model.mask_token_id, model.eos_token_id
    gen = x[:, prompt_len:]  # (A, G) view into x
    gen_mask = gen == mask_id  # (A, G)
    pos = _current_block_positions(gen_mask, spec.block_size)  # (A, K)

    candidates = gen_mask.gather(1, pos)  # (A, K)
    # Logits only where a token can be accepted: the current block's masked positions, flattened (n, V).
    keep = torch.zeros_like(x, dtype=torch.bool)  # (A, P+G)
    keep[:, prompt_len:].scatter_(1, pos, candidates)
    counted = {"keep_count": n_candidates} if n_candidates is not None else {}
    flat = model.logits(x, attn, keep=keep, **counted)  # (n, V), row-major order of the candidates
    vocab = flat.shape[-1]
    gumbel = None
    if spec.temperature > 0:  # noise keyed by (seed, sample, own step, position, token): batch-independent
        gumbel = gumbel_noise_at(spec.seed, sample_keys, step, pos, candidates, n_candidates, vocab)
    pred = scatter_prediction(
        predict(flat, banned_ids=banned_ids(model) if banned is None else banned, temperature=spec.temperature,
                gumbel=gumbel, consume=True, dtype=spec.entropy_dtype),
        candidates, n_candidates,
    )  # fields (A, K)
    accept = select_tokens(
        pred, candidates, spec.rule, spec.score, spec.threshold, spec.tokens_per_step,
        inclusive=decode_defaults(model).inclusive_threshold,
    )  # (A, K) bool, subset of candidates
    new_tokens = torch.where(accept, pred.tokens.to(gen.dtype), gen.gather(1, pos))  # (A, K)
    gen.scatter_(1, pos, new_tokens)
    new_steps = torch.where(accept, step[:, None], unmask.gather(1, pos))  # (A, K)
    unmask.scatter_(1, pos, new_steps)

    if spec.early_stop:
        apply_early_stop(gen, unmask, step, mask_id, eos_id)


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
    if spec.compile and hasattr(model, "compile_forward"):
        model.compile_forward()  # once per model; later decodes reuse (and at most recompile) its graphs
    if spec.rule == "d3llm":
        return decode_multi_block(model, prompt_ids, spec, prompt_attention_mask, sample_keys)
    assert prompt_ids.dim() == 2, "prompt_ids must be (B, P)"
    assert spec.gen_length % spec.block_size == 0, "gen_length must be a multiple of block_size"
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    mask_id = model.mask_token_id

    gen_init = torch.full((batch, spec.gen_length), mask_id, dtype=prompt_ids.dtype, device=device)
    x = torch.cat([prompt_ids, gen_init], dim=1)  # (B, P+G)
    attn = build_attention(prompt_attention_mask, spec.gen_length)  # (B, P+G) or None
    nfe = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    unmask_step = torch.full((batch, spec.gen_length), -1, dtype=torch.long, device=device)  # (B, G)
    if sample_keys is None:
        sample_keys = torch.arange(batch, device=device)
    sample_keys = sample_keys.to(device=device, dtype=torch.long)  # (B,)

    counted = takes_keep_count(model)
    banned = ids_tensor(banned_ids(model), device)
    # The first step is known on the host: every row is active, its first block all MASK.
    n_active, n_candidates, active = batch, batch * spec.block_size, None
    for it in range(spec.forward_cap):
        if it > 0:  # the one host sync of the iteration: stop? how many rows and candidates?
            active, n_candidates = _next_step(x[:, prompt_len:], mask_id, spec.block_size)
            n_active, n_candidates = host_values(active.sum(), n_candidates)
        if n_active == 0:
            break
        idx, everyone = active_index(active, n_active, batch) if it > 0 else (torch.arange(batch, device=device),
                                                                              True)
        rows_x = active_rows(x, idx, everyone)  # (A, P+G), updated in place below
        rows_unmask = active_rows(unmask_step, idx, everyone)  # (A, G)
        rows_attn = active_rows(attn, idx, everyone) if attn is not None else None
        step = nfe.clone() if everyone else nfe.index_select(0, idx)  # (A,) own forward index of this pass
        keys = active_rows(sample_keys, idx, everyone)
        _step(model, rows_x, rows_attn, step, rows_unmask, prompt_len, spec, keys,
              n_candidates if counted else None, banned)
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
