"""AUP against the official leaderboard values (method.md §8.1) and hand-computed cases."""

from __future__ import annotations

import math

import pytest

from d3llm_pipeline.reporting.aup import aup, kept_points, weight

# (points, y_max, official AUP) from the d3LLM leaderboard data files, as restated in method.md §8.1.
LEADERBOARD = [
    ([(1, 74.02), (9.11, 73.09)], 74.98, 637.65),  # d3LLM-LLaDA GSM8K-CoT
    ([(1, 74.0), (5.14, 72.63)], 74.98, 358.14),  # dParallel-LLaDA GSM8K-CoT
    ([(1, 32.76), (5.74, 30.36)], 41.15, 107.64),  # d3LLM-LLaDA MATH
    ([(1, 42.0), (4.21, 40.60)], 63.6, 88.36),  # d3LLM-LLaDA MBPP
    ([(1, 39.8), (5.95, 39.63)], 67.73, 96.64),  # d3LLM-LLaDA HumanEval
    ([(1, 78.32), (6.95, 74.22)], 82.56, 441.13),  # d3LLM-LLaDA Long-GSM8K
    ([(1, 83.47), (4.94, 81.36)], 83.94, 391.33),  # d3LLM-Dream GSM8K-CoT
    ([(1, 49.92), (2.61, 48.74)], 49.92, 126.66),  # Fast-dLLM-v2-7B MATH
    ([(1, 76.57), (5.12, 76.57)], 83.94, 318.99),  # EAGLE-3 GSM8K-CoT
    ([(1, 82.4), (2.88, 79.7)], 86.6, 208.36),  # d3LLM-Coder HumanEval
    ([(1, 72.55)], 74.98, 72.55),  # vanilla LLaDA: one point scores its accuracy
]


@pytest.mark.parametrize(("points", "y_max", "official"), LEADERBOARD)
def test_reproduces_official_leaderboard(points, y_max, official):
    assert aup(points, y_max) == pytest.approx(official, abs=0.01)


def test_hand_computed_three_points_and_order_independence():
    pts = [(4.0, 80.0), (1.0, 90.0), (2.0, 88.0)]  # unsorted on purpose; y_max 90 -> W(90) = 1
    w88, w80 = math.exp(-3 * (1 - 88 / 90)), math.exp(-3 * (1 - 80 / 90))
    # 80 is 10 points below y1 = 90: dropped; area = 1*90 + 0.5*(2-1)*(88 w88 + 90).
    expected = 90 + 0.5 * 1 * (88 * w88 + 90)
    assert kept_points(pts) == [(1.0, 90.0), (2.0, 88.0)]
    assert aup(pts, 90) == pytest.approx(expected)
    assert w80 < w88 < weight(90, 90) == 1.0


def test_weight_is_capped_at_one():
    assert weight(95, 90) == 1.0


@pytest.mark.parametrize(
    ("points", "y_max", "message"),
    [([], 90, "at least one"), ([(0.0, 50)], 90, "positive"), ([(-1, 50)], 90, "positive"),
     ([(1, 0.74), (2, 0.73)], 0.75, "percent"), ([(1, 150)], 90, "percent"), ([(1, 80)], 70, "y_max")],
)
def test_invalid_input_is_a_clear_error(points, y_max, message):
    with pytest.raises(ValueError, match=message):
        aup(points, y_max)
