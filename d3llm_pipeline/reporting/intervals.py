"""Means with 95% confidence intervals over a few seeds (Student's t), and the sign a paired difference can claim.

    mean, half = mean_ci([96.0, 95.5, 97.0])        # 96.17, 1.90: the interval is mean ± half
    sign_of(mean, half)                             # "+", "-", or "n.s." when the interval holds 0

Pure Python (no scipy: a table of t quantiles covers the seed counts a CPU ablation can afford).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (beyond: 1.96 plus the usual correction)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95% interval); half-width None for one value, both None for none."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, t975(len(values) - 1) * math.sqrt(var / len(values))


def sign_of(mean: float | None, half: float | None) -> str:
    """The sign the interval supports: "+" / "-" when it excludes 0, "n.s." when it holds 0, "n/a" when unknown."""
    if mean is None or half is None:
        return "n/a"
    if mean - half > 0:
        return "+"
    if mean + half < 0:
        return "-"
    return "n.s."
