"""Counter-based sampling noise: the same (seed, sample, step, position, token) always gets the same draw.

Temperature sampling in a batched decoder usually depends on the batch (a shared RNG stream), so a sample's
output changes with its neighbours, its shard or a resume point. Hashing the coordinates instead makes every
draw a pure function of them: batched == one-by-one and sharded == single-process hold at any temperature.

    g = gumbel_noise(seed=0, sample_keys=ids, steps=step, positions=pos, vocab_size=V)  # (A, K, V)
    tokens = (logits / T + g).argmax(-1)   # == a draw from softmax(logits / T)
"""

from __future__ import annotations

import torch

from d3llm_pipeline.decoding.batch import select_rows

# splitmix64 multipliers as signed int64 (torch has no uint64 arithmetic); products wrap modulo 2**64.
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it would copy the sign bit into the top)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (a bijection of the 64-bit pattern)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def counter_uniform(*keys: torch.Tensor | int) -> torch.Tensor:
    """Uniform draws in (0, 1), float64, broadcast over the shapes of `keys` (hashed in order)."""
    device = next((k.device for k in keys if isinstance(k, torch.Tensor)), torch.device("cpu"))
    h = torch.zeros((), dtype=torch.long, device=device)
    for key in keys:
        # an int key is filled on the device (torch.as_tensor(int) then .to(cuda) would be a blocking upload)
        key = key.long() if isinstance(key, torch.Tensor) else torch.full((), int(key), dtype=torch.long,
                                                                           device=device)
        h = mix64(h.to(key.device) ^ key)
    bits = _shr(h, 11)  # the top 53 bits, non-negative
    return (bits.double() + 0.5) / float(1 << 53)  # strictly inside (0, 1)


def gumbel_noise(
    seed: int, sample_keys: torch.Tensor, steps: torch.Tensor, positions: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Standard Gumbel noise (A, K, V) for samples (A,), their step (A,), positions (A, K) and every token."""
    device = positions.device
    tokens = torch.arange(vocab_size, device=device)[None, None, :]  # (1, 1, V)
    u = counter_uniform(seed, sample_keys[:, None, None], steps[:, None, None], positions[:, :, None], tokens)
    return (-torch.log(-torch.log(u))).float()  # (A, K, V)


def gumbel_noise_at(seed: int, sample_keys: torch.Tensor, steps: torch.Tensor, positions: torch.Tensor,
                    where: torch.Tensor, count: int | None, vocab_size: int) -> torch.Tensor:
    """gumbel_noise(...)[where] (n, V) for a bool mask `where` (A, K) with n True entries (`count` if known: no
    host sync), computed for those n rows only. The draws are pointwise in their keys, so the rows are bitwise the
    full tensor's; a decoder's candidates are a small part of its window (and V is ~150k for Dream), so this is
    most of the sampling cost saved."""
    a, k = positions.shape

    def rows(t: torch.Tensor) -> torch.Tensor:  # (A, K)-broadcastable -> (n,)
        return select_rows(t.expand(a, k), where, count)

    return gumbel_noise(seed, rows(sample_keys[:, None]), rows(steps[:, None]), rows(positions)[:, None],
                        vocab_size)[:, 0]
