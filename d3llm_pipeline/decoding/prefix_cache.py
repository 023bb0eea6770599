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

Because a due refresh outranks appending, R = 1 makes every forward a full one: the decoder then equals the
uncached one token for token (tested). Samples are batched by their forward start (at most one group per block
boundary), so batched == one-by-one holds with the cache too.

`plan_forward_reference` (decode.cache_plan=reference) is the forward plan of the official cached decoders
instead (d3LLM `generate_multi_block_kv_cache`, Dream `_sample_multi_block_kv_cache`), which differs in three
ways: appending outranks a due refresh and a stabilising block (a forward that lets a block join the cache is
always a cached one), a full forward never moves the tracked length, and completion is stamped only by a scan
from the cache boundary that stops at the first incomplete block (LLaDA's also at the first stabilising one,
`DecodeDefaults.cache_scan_stops_at_stabilising`). Dream's scan can leave several stabilising blocks, and its
refresh then keeps a cache longer than the tracked length, later forwards attending to those positions twice;
`phys` (entries held) apart from `length` (positions covered) reproduces that. The official code also shifts a
cached forward's logits on their own, so with Dream the first forwarded position takes its own output
(`own_first`) instead of the one before it.

    state = PrefixCacheState.empty(batch, n_blocks, device)
    completed_at, target, full = plan_forward(masks, state.completed_at[rows], state.length[rows], it, ...)
    plan = PrefixCacheState.ours(target, full, state.length[rows])   # (start, length, phys) after the forward
    groups = state.forward(model, x, attn, keep, rows, *plan)          # [(rows of the group, logits, n_g)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from d3llm_pipeline.decoding.batch import active_rows


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


def plan_forward_reference(
    masks: torch.Tensor,
    completed_at: torch.Tensor,
    length: torch.Tensor,
    phys: torch.Tensor,
    it: torch.Tensor,
    prompt_len: int,
    block_size: int,
    delay: int,
    refresh: int | None,
    scan_stops: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official cached decoders' plan: (completed_at (A, N), start (A,), length (A,), phys (A,)) after it.

    masks, completed_at, length, it: as for `plan_forward`; phys: (A,) cache entries held. Per row:

        scan the uncached blocks (the prompt is one, completed at 0) from the cache boundary while complete:
            stamp completion; a block complete for >= d iterations joins the cache, else it is stabilising
            (scan_stops: the scan ends at it, so later blocks are not stamped yet)
        some block joins      -> cached forward from `length`, append its K/V: length, phys += appended
        no cache yet          -> full forward, nothing kept
        stabilising or R due  -> full forward, keep the entries [0, start of the last stabilising block) or
                                 [0, length) (a refresh); `length` does not move
        otherwise             -> cached forward from `length`
    """
    n_blocks = masks.shape[1]
    device = masks.device
    ends = prompt_len + block_size * torch.arange(n_blocks + 1, device=device)  # (N+1,): the prompt, then blocks
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])  # (N+1,)
    complete = torch.cat([torch.ones_like(masks[:, :1], dtype=torch.bool), masks == 0], dim=1)  # (A, N+1)
    stamp = torch.cat([torch.zeros_like(completed_at[:, :1]), completed_at], dim=1)  # (A, N+1), -1 = unset
    run = complete.long().cumprod(dim=1).bool() & (ends[None, :] > length[:, None])  # scanned past the cache
    settled = it[:, None] - torch.where(stamp < 0, it[:, None], stamp) >= delay  # (A, N+1), after stamping
    if scan_stops:  # up to and including the first stabilising block
        stab = run & ~settled
        run &= (stab.long().cumsum(dim=1) - stab.long()) == 0
    stamp = torch.where(run & (stamp < 0), it[:, None], stamp)
    cached = (ends[None, :] <= length[:, None]) | (run & settled)  # (A, N+1): completion stamps never decrease,
    lead = cached.long().cumprod(dim=1).sum(dim=1)  # so the settled blocks of a scan are a leading run
    new_length = torch.where(lead > 0, ends[(lead - 1).clamp(min=0)], torch.zeros_like(length))  # (A,)
    appended = new_length - length
    stabilising = complete & (stamp >= 0) & (ends[None, :] > new_length[:, None])  # (A, N+1)
    has_stab = stabilising.any(dim=1)
    last_stab = (stabilising.long() * torch.arange(1, n_blocks + 2, device=device)).argmax(dim=1)  # (A,)
    refresh_due = (it % refresh == 0) if refresh is not None else torch.zeros_like(has_stab)
    has_cache = length > 0
    append = appended > 0
    full = ~append & (~has_cache | has_stab | refresh_due)
    start = torch.where(full, torch.zeros_like(length), length)
    keep_to = torch.where(has_stab, starts[last_stab], length)  # a full forward's kept entries
    phys = torch.where(append, phys + appended, torch.where(full, torch.where(has_cache, keep_to, 0), phys))
    return stamp[:, 1:], start, new_length, phys


@dataclass
class PrefixCacheState:
    """Per-sample cache bookkeeping plus the key/value buffers of the whole batch.

    keys/values: per layer (B, H, C, D), allocated at the first forward; only [0, phys) of a row is valid. They
    hold the K/V of positions [0, length) in order, except after a Dream-reference refresh (see the module
    docstring), when phys > length.
    """

    length: torch.Tensor  # (B,) long: positions [0, length) are cached; a cached forward starts here
    completed_at: torch.Tensor  # (B, N) long, -1 until the block has no MASK
    forwarded: torch.Tensor  # (B,) long: positions run through the model, summed over the sample's forwards
    phys: torch.Tensor  # (B,) long: K/V entries held (== length for cache_plan=ours)
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, batch: int, n_blocks: int, device: torch.device) -> PrefixCacheState:
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return cls(length=zeros, completed_at=torch.full((batch, n_blocks), -1, dtype=torch.long, device=device),
                   forwarded=zeros.clone(), phys=zeros.clone())

    @staticmethod
    def ours(target: torch.Tensor, full: torch.Tensor, length: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`plan_forward`'s (target, full) as (start, length, phys) after the forward, for rows at `length`."""
        return torch.where(full, torch.zeros_like(target), length), target, target

    def forward(
        self,
        model,
        x: torch.Tensor,
        attn: torch.Tensor | None,
        keep: torch.Tensor,
        rows: torch.Tensor,
        start: torch.Tensor,
        length: torch.Tensor,
        phys: torch.Tensor,
        own_first: bool = False,
        host: tuple[list[int], list[int], list[bool], list[int]] | None = None,
    ) -> list[tuple[torch.Tensor | None, torch.Tensor, int | None]]:
        """Per group of rows, (their indices into the A active rows or None for all, logits (n_g, V) of their
        `keep` positions in row-major order, n_g or None); updates the cache of `rows` (A,).

        x, attn: the active rows (A, L); rows: their indices into the batch; start (0 = a full forward), length,
        phys (A,): from a plan. One model call per distinct (start, entries held); a cached row attends to all
        its entries, and its new K/V go after them. The groups' logits are handed back as they are: reordering
        them into one row-major block would copy (n, V). own_first: see HFDiffusionAdapter.forward_kv.
        host: the rows' (start, entries held, new K/V needed, kept positions) as host lists, read by the decoder
        in its one sync of the iteration; without it they are read here (a sync) and the model's logits are
        taken by boolean mask (another).
        """
        held = torch.where(start > 0, self.phys[rows], torch.zeros_like(start))  # (A,) entries attended to
        if host is None:
            starts, helds, phys_list = torch.stack([start, held, phys]).tolist()
            needs, counts = [p > h for p, h in zip(phys_list, helds, strict=True)], None
        else:
            starts, helds, needs, counts = host
        groups = []
        batch = self.length.shape[0]
        for s, h in sorted(set(zip(starts, helds, strict=True))):
            local = [i for i, key in enumerate(zip(starts, helds, strict=True)) if key == (s, h)]
            whole = len(local) == x.shape[0]
            # the group's rows by index, sized on the host (neither a mask nor an upload of `local`: no sync)
            g = None if whole else ((start == s) & (held == h)).nonzero_static(size=len(local)).squeeze(1)
            # Every sample of the batch in this group (always so at batch 1): plain slices, no gather / scatter.
            global_rows = slice(None) if len(local) == batch else rows.index_select(0, g) if g is not None else rows
            past = None if s == 0 else [(k[global_rows, :, :h], v[global_rows, :, :h])
                                        for k, v in zip(self.keys, self.values, strict=True)]
            need_kv = any(needs[i] for i in local)
            count = None if counts is None else sum(counts[i] for i in local)
            extra = {"own_first": True} if own_first else {}
            if count is not None:
                extra["keep_count"] = count
            logits, kv = model.forward_kv(active_rows(x, g, whole), s, past,
                                          None if attn is None else active_rows(attn, g, whole),
                                          active_rows(keep, g, whole), return_kv=need_kv, **extra)
            if need_kv:
                self._write(global_rows, h, kv)
            groups.append((None if whole else g, logits, count))
        self.forwarded.index_add_(0, rows, x.shape[1] - start)
        self.length.index_copy_(0, rows, length)  # never shrinks: complete blocks stay complete
        self.phys.index_copy_(0, rows, phys)
        return groups

    def _write(self, global_rows: torch.Tensor | slice, at: int, kv) -> None:
        """Store each layer's new K/V (T positions) at entries [at, at + T); rows' valid counts are set by the
        caller. The buffers are allocated at the first write and grow only for a Dream-reference cache."""
        size = at + kv[0][0].shape[2]
        if not self.keys:  # first forward: allocate (B, H, C, D) per layer from the shapes the model returned
            batch = self.length.shape[0]
            for k, v in kv:
                self.keys.append(k.new_zeros(batch, k.shape[1], size, k.shape[3]))
                self.values.append(v.new_zeros(batch, v.shape[1], size, v.shape[3]))
        if size > self.keys[0].shape[2]:
            grow = size - self.keys[0].shape[2]
            self.keys = [torch.cat([b, b.new_zeros(*b.shape[:2], grow, b.shape[3])], dim=2) for b in self.keys]
            self.values = [torch.cat([b, b.new_zeros(*b.shape[:2], grow, b.shape[3])], dim=2) for b in self.values]
        for buf_k, buf_v, (k, v) in zip(self.keys, self.values, kv, strict=True):
            buf_k[global_rows, :, at:size] = k
            buf_v[global_rows, :, at:size] = v
