"""AUP, the d3LLM leaderboard metric: accuracy-weighted area under the TPF-accuracy curve (method.md §8).

Points are (ρ, y): ρ = tokens per forward (> 0), y = accuracy in percent. Sorted by ρ; y₁ is the accuracy at
the smallest ρ; only points with y ≥ y₁ − 5 count. With W(y) = min(exp(−α(1 − y / y_max)), 1), α = 3:

    AUP = ρ₁·y₁ + Σᵢ≥₂ ½ (ρᵢ − ρᵢ₋₁) (yᵢ·W(yᵢ) + yᵢ₋₁·W(yᵢ₋₁))

The first term is unweighted, so a single point at ρ = 1 scores y. y_max is the best accuracy of any method
compared on the task.

    aup([(1.0, 74.02), (9.11, 73.09)], y_max=74.98)   # 637.65 (d3LLM-LLaDA, GSM8K-CoT)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

ALPHA = 3.0
MAX_DROP = 5.0  # accuracy points below y₁ that a point may lose and still count


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """W(y) = min(exp(−α (1 − y / y_max)), 1)."""
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def _validated(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    pts = [(float(r), float(y)) for r, y in points]
    if not pts:
        raise ValueError("AUP needs at least one (tpf, accuracy) point")
    for rho, y in pts:
        if not rho > 0 or not math.isfinite(rho):
            raise ValueError(f"TPF must be a positive number, got {rho}")
        if not 0 <= y <= 100:
            raise ValueError(f"accuracy must be in percent (0-100), got {y}")
    if all(y <= 1.0 for _, y in pts) and any(y > 0 for _, y in pts):
        raise ValueError("accuracies all lie in [0, 1]: give them in percent (multiply by 100)")
    return sorted(pts)


def kept_points(points: Iterable[tuple[float, float]], max_drop: float = MAX_DROP) -> list[tuple[float, float]]:
    """The points AUP integrates: sorted by TPF, within `max_drop` accuracy points of the first."""
    pts = _validated(points)
    floor = pts[0][1] - max_drop
    return [p for p in pts if p[1] >= floor]


def aup(points: Iterable[tuple[float, float]], y_max: float, alpha: float = ALPHA,
        max_drop: float = MAX_DROP) -> float:
    """AUP of one method's curve on one task (see module docstring)."""
    pts = kept_points(points, max_drop)
    if not 0 < y_max <= 100:
        raise ValueError(f"y_max must be the best accuracy in percent (0-100], got {y_max}")
    if y_max < max(y for _, y in pts):
        raise ValueError(f"y_max={y_max} is below an accuracy on this curve; use the best accuracy of all methods")
    (rho, y), total = pts[0], pts[0][0] * pts[0][1]
    for rho_next, y_next in pts[1:]:
        total += 0.5 * (rho_next - rho) * (y_next * weight(y_next, y_max, alpha) + y * weight(y, y_max, alpha))
        rho, y = rho_next, y_next
    return total
