"""Loss terms shared by teacher training and distillation (pure tensor functions, no framework imports).

    loss = masked_cross_entropy(logits, targets, masked)   # logits (B, L, V), targets/masked (B, L)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over the masked positions of the whole batch (sum / count).

    Unmasked positions contribute nothing; an all-clean batch gives 0 (with a graph, so backward still works).
    Computed in float32 so bf16 logits do not lose the small differences between near-certain tokens.
    """
    # (B, L, V) -> (N, V) over masked positions only: cheaper than a full CE then a mask.
    selected = logits[masked].float()  # (N, V)
    if selected.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(selected, targets[masked], reduction="mean")
