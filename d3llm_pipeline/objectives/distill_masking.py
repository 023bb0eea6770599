"""Noisy-input construction for d3LLM pseudo-trajectory distillation (method.md §2), pure torch.

For each sample one window (block) of the generation region is chosen; inside it the teacher's unmask order
decides which positions stay clean, everything after it is masked and everything before it is clean.
All positions here are *relative to the response start* (index 0 = first response token).

    lengths = response_lengths(targets, eos_token_id)                     # (B,)
    start, end = sample_windows(lengths, window=16, gen_length=targets.shape[1], generator=g)
    primary, complement = trajectory_masks(unmask_step, start, end, ratio=0.5)   # (B, G) bool each
    input_ids = apply_masks(prompt_ids, targets, primary, mask_token_id)   # (B, P + G)

The random draws (windows, naive random masks) can be those of rows [row_offset, row_offset + B) of a larger
batch of `total_rows`: a data-parallel rank then draws exactly what one process drawing the whole global batch
gives those rows, so the noise of every row does not depend on the number of devices.
"""

from __future__ import annotations

import torch

# Added before flooring (1 - r) * k' so products that are integers in exact arithmetic but land a hair below
# in float64 (e.g. (1 - 0.9) * 10 = 0.9999999999999998) are not floored one too low. Far smaller than 1 / k'.
_FLOOR_EPS = 1e-9
# Floor of the naive-random-mask probability, as in the d3LLM trainer: even r = 0 masks a few positions.
_RANDOM_MASK_EPS = 1e-3


def response_lengths(targets: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens up to and including the first EOS of each row (G if a row has none): LLaDA's full length - P.

    targets: (B, G) long. Returns (B,) long.
    """
    is_eos = targets == eos_token_id  # (B, G)
    # argmax over an int tensor returns the first maximal index, i.e. the first EOS when one exists.
    first = is_eos.to(torch.int8).argmax(dim=1)  # (B,)
    gen_length = torch.full_like(first, targets.shape[1])
    return torch.where(is_eos.any(dim=1), first + 1, gen_length).long()


def _shard_draws(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 row_offset: int, total_rows: int | None) -> torch.Tensor:
    """float64 uniforms of `shape` (rows first): rows [row_offset, row_offset + shape[0]) of the draws of a
    (total_rows, *shape[1:]) batch (total_rows None: the batch itself). Drawing the whole global batch costs
    total_rows x shape[1:] doubles on the CPU generator, nothing next to a forward."""
    total = shape[0] if total_rows is None else total_rows
    if not 0 <= row_offset <= total - shape[0]:
        raise ValueError(f"rows [{row_offset}, {row_offset + shape[0]}) are not inside a batch of {total}")
    u = torch.rand((total, *shape[1:]), generator=generator, dtype=torch.float64, device=device)
    return u[row_offset : row_offset + shape[0]]


def sample_windows(
    lengths: torch.Tensor, window: int, gen_length: int, generator: torch.Generator | None = None,
    row_offset: int = 0, total_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one training window [start, end) per sample (method.md §2.2).

    max_blocks = floor(length / window); j ~ Uniform{0, ..., max_blocks} (inclusive); start = j * window and
    end = start + window, except j == max_blocks, whose window runs to the end of the region (end = gen_length),
    covering the response tail plus EOS padding.

    Guard (our choice): if start >= gen_length (e.g. length == gen_length and divisible by `window`, so the
    last window would be empty) we use the last window that starts inside the region,
    start = floor((gen_length - 1) / window) * window (= gen_length - window when gen_length is a multiple of
    `window`), end = gen_length. This keeps start a multiple of `window` and never returns an empty window.
    `end` is also clamped to gen_length for lengths longer than the region.

    lengths: (B,) long, rows [row_offset, row_offset + B) of a batch of total_rows (default: B) whose draws
    they take (module docstring). Returns start (B,), end (B,) long with 0 <= start < end <= gen_length.
    """
    if window < 1 or gen_length < 1:
        raise ValueError(f"window ({window}) and gen_length ({gen_length}) must be >= 1")
    lengths = lengths.long().clamp(min=0)
    max_blocks = lengths // window  # (B,)
    # torch.randint has no per-element upper bound: scale a uniform draw and floor it instead.
    u = _shard_draws(tuple(lengths.shape), generator, lengths.device, row_offset, total_rows)  # (B,)
    j = torch.minimum((u * (max_blocks + 1).double()).floor().long(), max_blocks)  # (B,)
    start = j * window  # (B,)
    end = torch.where(j == max_blocks, torch.full_like(start, gen_length), start + window)
    last_start = ((gen_length - 1) // window) * window
    empty = start >= gen_length  # (B,)
    start = torch.where(empty, torch.full_like(start, last_start), start)
    end = torch.where(empty, torch.full_like(end, gen_length), end).clamp(max=gen_length)
    return start, end


def _window_layout(
    start: torch.Tensor, end: torch.Tensor, gen_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-window and future (at/after `end`) position masks, both (B, G) bool."""
    pos = torch.arange(gen_length, device=start.device)[None, :]  # (1, G)
    in_window = (pos >= start[:, None]) & (pos < end[:, None])  # (B, G)
    future = pos >= end[:, None]  # (B, G)
    return in_window, future


def _ratio_tensor(ratio: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Mask ratio as a (B,) float64 tensor (a scalar is shared by the whole batch)."""
    r = torch.as_tensor(ratio, dtype=torch.float64, device=device)
    return r.expand(batch) if r.dim() == 0 else r.reshape(batch)


def trajectory_masks(
    unmask_step: torch.Tensor, start: torch.Tensor, end: torch.Tensor, ratio: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Primary and complementary masks from the teacher's unmask order (method.md §2.3-§2.4).

    Inside each window (length k' = end - start) the first n = floor((1 - r) * k') positions in the teacher's
    order (sorted by (unmask_step, position): ties go to the lower position) are clean, the rest masked.
    Positions at/after `end` are masked in both outputs; positions before `start` are clean in both.
    The complement masks exactly the in-window positions the primary leaves clean.

    We rank positions within the window rather than replaying trajectory state s + n: this is what the
    reference approximates for windows that are not aligned with the teacher's blocks, and it reveals exactly
    n tokens. Rows with never-revealed positions (step < 0) are not special-cased here: those positions sort
    first; detect them with `count_invalid_trajectories` and fall back in the caller.

    unmask_step: (B, G) long; start, end: (B,) long; ratio: float or (B,). Returns two (B, G) bool tensors.
    """
    batch, gen_length = unmask_step.shape
    in_window, future = _window_layout(start, end, gen_length)
    k = (end - start).clamp(min=0)  # (B,)
    r = _ratio_tensor(ratio, batch, unmask_step.device)  # (B,)
    n_clean = torch.floor((1.0 - r) * k.double() + _FLOOR_EPS).long()  # (B,)
    n_clean = torch.minimum(n_clean.clamp(min=0), k)  # (B,) guards r outside [0, 1]

    # Out-of-window positions get a key above every real step so in-window positions take ranks 0..k'-1.
    sentinel = unmask_step.max().clamp(min=0) + 1
    key = torch.where(in_window, unmask_step, sentinel)  # (B, G)
    order = torch.sort(key, dim=1, stable=True).indices  # (B, G); stable => equal steps keep position order
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(gen_length, device=order.device).expand(batch, -1))  # (B, G)

    revealed = in_window & (ranks < n_clean[:, None])  # (B, G)
    primary = (in_window & ~revealed) | future
    complement = revealed | future
    return primary, complement


def random_masks(
    start: torch.Tensor,
    end: torch.Tensor,
    gen_length: int,
    ratio: float | torch.Tensor,
    generator: torch.Generator | None = None,
    row_offset: int = 0,
    total_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive-random-mask ablation (method.md §2.5): each in-window position masked i.i.d. with probability
    (1 - 1e-3) * r + 1e-3; future masked in both; the complement is the in-window negation.

    start, end: (B,) long; ratio: float or (B,); row_offset / total_rows as in `sample_windows`. Returns
    primary, complement, each (B, G) bool.
    """
    batch = start.shape[0]
    in_window, future = _window_layout(start, end, gen_length)
    r = _ratio_tensor(ratio, batch, start.device)  # (B,)
    p = (1.0 - _RANDOM_MASK_EPS) * r + _RANDOM_MASK_EPS  # (B,)
    u = _shard_draws((batch, gen_length), generator, start.device, row_offset, total_rows)  # (B, G)
    masked_in = in_window & (u < p[:, None])  # (B, G)
    primary = masked_in | future
    complement = (in_window & ~masked_in) | future
    return primary, complement


def apply_masks(
    prompt_ids: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """Prompt (B, P) followed by targets (B, G) with masked positions replaced by MASK -> (B, P + G)."""
    noisy = torch.where(masked, torch.full_like(targets, mask_token_id), targets)  # (B, G)
    return torch.cat([prompt_ids.to(targets.dtype), noisy], dim=1)


def count_invalid_trajectories(unmask_step: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows with a position the teacher never revealed (step < 0). The caller counts and logs
    these and decides on a fallback (e.g. random masks); the masking functions do not change behaviour."""
    return (unmask_step < 0).any(dim=1)
