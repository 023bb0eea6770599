"""Prefix KV cache with delayed caching and periodic refresh, for d3LLM multi-block decoding (method.md §5.3).

Only a prefix is ever cached: the prompt and the leading *completed* blocks. A cached forward runs the rest of
the sequence (current and future blocks, MASKs included) on top of the cached keys/values, with bidirectional
attention inside the part it runs. A block that has just completed is *stabilising*: its tokens are final but
the cached prefix was computed while they were still MASK, so for `delay` (d) iterations every forward is a
full one that rebuilds the cache; after that the block joins the cache. Every `refresh` (R) iterations a full
forward refreshes the whole cache regardless.

Per sample and iteration `it` (its own 1-based forward count), `plan_forward` decides:

    target  = end of the prompt + leading blocks complete for >= d iterations (0 while it < d: the prompt
              counts as completed at iteration 0)
    full    = no cache yet  or  it % R == 0  or  the block right after `target` is complete (stabilising)
    full    -> forward the whole sequence, rebuild the cache to `target`
    cached  -> forward x[length:] on the cache, extend it to `target` with this forward's new keys/values

Where the reference implementation lets a rebuilt cache run past its tracked length (method.md §5.3), here the
length is always set to the rebuild point. Because a refresh outranks appending, R = 1 makes every forward a
full one: the decoder then equals the uncached one token for token (tested). Samples are batched by their
forward start (at most one group per block boundary), so batched == one-by-one holds with the cache too.

    state = PrefixCacheState.empty(batch, n_blocks, device)
    completed_at, target, full = plan_forward(masks, state.completed_at[rows], state.length[rows], it, ...)
    groups = state.forward(model, x, attn, keep, rows, target, full)   # [(rows of the group, logits)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from d3llm_pipeline.decoding.semi_ar import active_rows


def plan_forward(
    masks: torch.Tensor,
    completed_at: torch.Tensor,
    length: torch.Tensor,
    it: torch.Tensor,
    prompt_len: int,
    block_size: int,
    delay: int,
    refresh: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(completed_at (A, N), target (A,), full (A,)) for the rows' next forward; see the module docstring.

    masks: (A, N) MASK count per block; completed_at: (A, N) iteration a block was first seen complete, -1 if
    never; length: (A,) cached positions; it: (A,) this forward's 1-based index per row.
    """
    complete = masks == 0  # (A, N)
    completed_at = torch.where(complete & (completed_at < 0), it[:, None], completed_at)
    settled = complete & (it[:, None] - completed_at >= delay)  # (A, N) may join the cache
    lead = settled.long().cumprod(dim=1).sum(dim=1)  # (A,) leading settled blocks
    prompt_settled = it >= delay
    target = torch.where(prompt_settled, prompt_len + lead * block_size, torch.zeros_like(lead))
    n_blocks = masks.shape[1]
    after = complete.gather(1, lead.clamp(max=n_blocks - 1)[:, None]).squeeze(1)  # block right after target
    stabilising = (lead < n_blocks) & after & prompt_settled
    full = (length == 0) | stabilising
    if refresh is not None:
        full |= it % refresh == 0
    return completed_at, target, full


@dataclass
class PrefixCacheState:
    """Per-sample cache bookkeeping plus the key/value buffers of the whole batch.

    keys/values: per layer (B, H, L, D), allocated at the first forward; only [0, length) of a row is valid.
    """

    length: torch.Tensor  # (B,) long
    completed_at: torch.Tensor  # (B, N) long, -1 until the block has no MASK
    forwarded: torch.Tensor  # (B,) long: positions run through the model, summed over the sample's forwards
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, batch: int, n_blocks: int, device: torch.device) -> PrefixCacheState:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return cls(length=zeros, completed_at=torch.full((batch, n_blocks), -1, dtype=torch.long, device=device),
                   forwarded=zeros.clone())

    def forward(
        self,
        model,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        keep: torch.Tensor,
        rows: torch.Tensor,
        target: torch.Tensor,
        full: torch.Tensor,
    ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """Per group of rows, (their indices into the A active rows or None for all, logits (n_g, V) of their
        `keep` positions in row-major order); updates the cache of `rows` (A,).

        x, attn: the active rows (A, L); rows: their indices into the batch; target, full: from plan_forward.
        One model call per distinct forward start (0 for full rows, the cache length otherwise). The groups'
        logits are handed back as they are: reordering them into one row-major block would copy (n, V).
        """
        start = torch.where(full, torch.zeros_like(target), self.length[rows])  # (A,)
        starts, targets = torch.stack([start, target]).tolist()  # the iteration's one host sync for the cache
        groups = []
        batch = self.length.shape[0]
        for s in sorted(set(starts)):
            local = [i for i, v in enumerate(starts) if v == s]
            g = torch.tensor(local, device=x.device)
            # Every sample of the batch in this group (always so at batch 1): plain slices, no gather / scatter.
            global_rows = slice(None) if len(local) == batch else rows.index_select(0, g)
            past = None if s == 0 else [(k[global_rows, :, :s], v[global_rows, :, :s])
                                        for k, v in zip(self.keys, self.values, strict=True)]
            need_kv = any(targets[i] > s for i in local)
            whole = len(local) == x.shape[0]
            logits, kv = model.forward_kv(active_rows(x, g, whole), s, past,
                                          None if attn is None else active_rows(attn, g, whole),
                                          active_rows(keep, g, whole), return_kv=need_kv)
            if need_kv:
                self._write(global_rows, s, kv)
            groups.append((None if whole else g, logits))
        self.forwarded.index_add_(0, rows, x.shape[1] - start)
        self.length.index_copy_(0, rows, target)  # targets never shrink: complete blocks stay complete
        return groups

    def _write(self, global_rows: torch.Tensor | slice, start: int, kv) -> None:
        """Store positions [start, L) of each layer's new keys/values; rows' valid lengths are set by the caller."""
        if not self.keys:  # first forward: allocate (B, H, L, D) per layer from the shapes the model returned
            batch = self.length.shape[0]
            for k, v in kv:
                full_len = start + k.shape[2]
                self.keys.append(k.new_zeros(batch, k.shape[1], full_len, k.shape[3]))
                self.values.append(v.new_zeros(batch, v.shape[1], full_len, v.shape[3]))
        for buf_k, buf_v, (k, v) in zip(self.keys, self.values, kv, strict=True):
            buf_k[global_rows, :, start:] = k
            buf_v[global_rows, :, start:] = v
