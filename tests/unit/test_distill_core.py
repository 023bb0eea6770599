"""Distillation core: trajectory/random masks, windows, losses and curricula against hand-built references."""

from __future__ import annotations

import math

import pytest
import torch

from d3llm_pipeline.objectives.distill_losses import DistillLossConfig, distill_loss, entropy_on_correct
from d3llm_pipeline.objectives.distill_masking import (
    apply_masks,
    count_invalid_trajectories,
    random_masks,
    response_lengths,
    sample_windows,
    trajectory_masks,
)
from d3llm_pipeline.objectives.schedules import mask_ratio_bounds, sample_mask_ratio, window_size

EOS, MASK = 2, 1


def _t(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _positions(mask_row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask_row).flatten().tolist())


# --------------------------------------------------------------------------------------------- masks by hand


def test_full_window_half_ratio_by_hand():
    step = _t([3, 0, 1, 5, 4, 2, 7, 6])
    primary, comp = trajectory_masks(step, torch.tensor([0]), torch.tensor([8]), 0.5)
    # n = 4 revealed: steps 0, 1, 2, 3 sit at positions 1, 2, 5, 0.
    assert _positions(primary[0]) == {3, 4, 6, 7}
    assert _positions(comp[0]) == {0, 1, 2, 5}


def test_inner_window_masks_future_and_keeps_prefix():
    step = _t([3, 0, 1, 5, 4, 2, 7, 6, 9, 8])
    primary, comp = trajectory_masks(step, torch.tensor([4]), torch.tensor([8]), 0.5)
    # Window [4, 8) has steps 4, 2, 7, 6 -> reveal n = 2: steps 2 (pos 5) and 4 (pos 4). Future = {8, 9}.
    assert _positions(primary[0]) == {6, 7, 8, 9}
    assert _positions(comp[0]) == {4, 5, 8, 9}
    assert not primary[0, :4].any() and not comp[0, :4].any()


def test_ties_reveal_lower_position_first():
    step = _t([0, 0, 1, 1])
    primary, comp = trajectory_masks(step, torch.tensor([0]), torch.tensor([4]), 0.75)  # n = 1
    assert _positions(primary[0]) == {1, 2, 3}
    primary, _ = trajectory_masks(step, torch.tensor([0]), torch.tensor([4]), 0.25)  # n = 3
    assert _positions(primary[0]) == {3}


@pytest.mark.parametrize(
    ("ratio", "k", "n_clean"), [(0.8, 16, 3), (0.0, 16, 16), (1.0, 16, 0), (0.9, 10, 1), (0.7, 10, 3)]
)
def test_reveal_count_is_floor_and_float_safe(ratio: float, k: int, n_clean: int):
    step = torch.randperm(k, generator=torch.Generator().manual_seed(k)).view(1, k)
    primary, comp = trajectory_masks(step, torch.tensor([0]), torch.tensor([k]), ratio)
    assert int(comp.sum()) == n_clean
    assert int(primary.sum()) == k - n_clean


def test_apply_masks_keeps_prompt_and_replaces_masked():
    prompt = _t([7, 8, 9])
    targets = _t([10, 11, 12, 13])
    masked = torch.tensor([[False, True, False, True]])
    ids = apply_masks(prompt, targets, masked, MASK)
    assert ids.tolist() == [[7, 8, 9, 10, MASK, 12, MASK]]


# ----------------------------------------------------------------------------------- vectorised vs reference


def _reference_masks(step: list[int], start: int, end: int, ratio: float) -> tuple[list[bool], list[bool]]:
    """Plain per-sample version of trajectory_masks, written independently of the library."""
    g = len(step)
    k = end - start
    n = int(math.floor((1.0 - ratio) * k + 1e-9))
    n = max(0, min(n, k))
    order = sorted(range(start, end), key=lambda p: (step[p], p))
    revealed = set(order[:n])
    primary, comp = [False] * g, [False] * g
    for p in range(g):
        if p >= end:
            primary[p] = comp[p] = True
        elif p >= start:
            primary[p] = p not in revealed
            comp[p] = p in revealed
    return primary, comp


@pytest.mark.parametrize("per_sample_ratio", [False, True])
def test_vectorised_matches_reference(per_sample_ratio: bool):
    g = torch.Generator().manual_seed(11)
    b, gen = 32, 64
    # Random orders with ties: steps drawn with replacement from a small range.
    step = torch.randint(0, 40, (b, gen), generator=g)
    lengths = torch.randint(1, gen + 1, (b,), generator=g)
    window = int(torch.randint(4, 33, (1,), generator=g))
    start, end = sample_windows(lengths, window, gen, generator=g)
    if per_sample_ratio:
        ratio: float | torch.Tensor = torch.rand(b, generator=g, dtype=torch.float64)
        ratio[:3] = torch.tensor([0.0, 1.0, 0.8], dtype=torch.float64)
    else:
        ratio = 0.8
    primary, comp = trajectory_masks(step, start, end, ratio)
    for i in range(b):
        r = float(ratio[i]) if isinstance(ratio, torch.Tensor) else ratio
        ref_p, ref_c = _reference_masks(step[i].tolist(), int(start[i]), int(end[i]), r)
        assert primary[i].tolist() == ref_p, i
        assert comp[i].tolist() == ref_c, i


def test_complement_structure_on_random_inputs():
    g = torch.Generator().manual_seed(5)
    b, gen = 16, 48
    step = torch.stack([torch.randperm(gen, generator=g) for _ in range(b)])
    start, end = sample_windows(torch.randint(1, gen + 1, (b,), generator=g), 8, gen, generator=g)
    primary, comp = trajectory_masks(step, start, end, torch.rand(b, generator=g))
    pos = torch.arange(gen)[None]
    in_win = (pos >= start[:, None]) & (pos < end[:, None])
    future = pos >= end[:, None]
    assert torch.equal(primary & in_win, in_win & ~comp)  # exact in-window complement
    assert (primary[future]).all() and (comp[future]).all()
    before = pos < start[:, None]
    assert not primary[before].any() and not comp[before].any()
    # r = 0 -> nothing masked in window; r = 1 -> whole window masked.
    p0, _ = trajectory_masks(step, start, end, 0.0)
    p1, c1 = trajectory_masks(step, start, end, 1.0)
    assert not (p0 & in_win).any()
    assert torch.equal(p1 & in_win, in_win) and not (c1 & in_win).any()


# ---------------------------------------------------------------------------------------- lengths, windows


def test_response_lengths_include_first_eos():
    targets = _t([5, 6, EOS, EOS], [EOS, EOS, EOS, EOS], [5, 6, 7, 8], [5, EOS, 6, EOS])
    assert response_lengths(targets, EOS).tolist() == [3, 1, 4, 2]


def test_sample_windows_valid_and_uniform():
    g = torch.Generator().manual_seed(0)
    gen, window, n = 64, 16, 20000
    lengths = torch.full((n,), 40)  # max_blocks = 2 -> j in {0, 1, 2}
    start, end = sample_windows(lengths, window, gen, generator=g)
    assert ((0 <= start) & (start < end) & (end <= gen)).all()
    assert (start % window == 0).all()
    j = start // window
    assert torch.equal(end[j == 2], torch.full_like(end[j == 2], gen))  # last window runs to G
    assert torch.equal(end[j < 2], start[j < 2] + window)
    freq = torch.bincount(j, minlength=3).double() / n
    assert freq.numel() == 3 and (freq - 1 / 3).abs().max() < 0.02


def test_sample_windows_never_empty():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([64, 64, 1, 0, 63, 16] * 200)
    start, end = sample_windows(lengths, 16, 64, generator=g)
    assert ((0 <= start) & (start < end) & (end <= 64)).all()
    assert (start % 16 == 0).all()
    # length == G == 4 * window: j = 4 would be empty, falls back to the last full window [48, 64).
    full = lengths == 64
    assert (start[full] <= 48).all() and ((start[full] == 48) == (end[full] == 64)).all()
    # A non-multiple gen_length keeps starts on the window grid and still never returns an empty window.
    start, end = sample_windows(torch.full((500,), 50), 16, 50, generator=g)
    assert ((start < end) & (end <= 50) & (start % 16 == 0)).all()


# ------------------------------------------------------------------------------------------- random masks


def test_random_masks_rate_future_and_complement():
    g = torch.Generator().manual_seed(2)
    b, gen, r = 4000, 32, 0.3
    start = torch.full((b,), 8)
    end = torch.full((b,), 24)
    primary, comp = random_masks(start, end, gen, r, generator=g)
    in_win = torch.zeros(gen, dtype=torch.bool)
    in_win[8:24] = True
    rate = primary[:, in_win].double().mean().item()
    assert abs(rate - ((1 - 1e-3) * r + 1e-3)) < 0.005
    assert primary[:, 24:].all() and comp[:, 24:].all()
    assert not primary[:, :8].any() and not comp[:, :8].any()
    assert torch.equal(comp[:, in_win], ~primary[:, in_win])
    # Per-sample ratios: r = 0 still masks at the 1e-3 floor, r = 1 masks everything.
    ratios = torch.tensor([0.0, 1.0]).repeat(b // 2)
    primary, _ = random_masks(start, end, gen, ratios, generator=g)
    assert primary[1::2, in_win].all()
    assert primary[0::2, in_win].double().mean().item() < 0.005


def test_invalid_trajectories_flagged():
    step = _t([0, 1, 2], [0, -1, 2], [-1, -1, -1])
    assert count_invalid_trajectories(step).tolist() == [False, True, True]


# ------------------------------------------------------------------------------------------------- losses


def _ce(row: list[float], t: int) -> float:
    return -row[t] + math.log(sum(math.exp(x) for x in row))


def _h(row: list[float], temp: float) -> float:
    z = sum(math.exp(x / temp) for x in row)
    q = [math.exp(x / temp) / z for x in row]
    return -sum(p * math.log(p + 1e-12) for p in q)


# Sequence of 4 (one prompt token + three region tokens), V = 3.
ROWS = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 3.0]]
ROWS_C = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.2, 0.0, 1.5], [1.0, 2.0, 0.0]]
TARGETS = torch.tensor([[0, 0, 2, 2]])
PRIMARY = torch.tensor([[False, True, True, False]])  # pos 1 correct, pos 2 wrong
COMP = torch.tensor([[False, False, False, True]])  # pos 3: wrong in ROWS_C (argmax 1 != 2)
COMP2 = torch.tensor([[False, False, True, True]])  # pos 2 correct in ROWS_C


def test_entropy_on_correct_by_hand():
    logits = torch.tensor([ROWS], requires_grad=True)
    h = entropy_on_correct(logits, TARGETS, PRIMARY, 0.5)
    assert h.item() == pytest.approx(_h(ROWS[1], 0.5), rel=1e-6)  # pos 2 is wrong -> excluded
    h.backward()
    assert logits.grad is not None and logits.grad[0, 1].abs().sum() > 0
    assert logits.grad[0, 2].abs().sum() == 0
    everything = torch.ones_like(PRIMARY)
    expected = (_h(ROWS[0], 0.5) + _h(ROWS[1], 0.5) + _h(ROWS[3], 0.5)) / 3  # pos 0: argmax 0 == target 0
    assert entropy_on_correct(logits, TARGETS, everything, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_entropy_no_correct_positions_is_zero_with_graph():
    logits = torch.tensor([ROWS], requires_grad=True)
    only_wrong = torch.tensor([[False, False, True, False]])
    h = entropy_on_correct(logits, TARGETS, only_wrong, 0.5)
    assert h.item() == 0.0
    h.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_distill_loss_llada_default_by_hand():
    logits = torch.tensor([ROWS], requires_grad=True)
    logits_c = torch.tensor([ROWS_C], requires_grad=True)
    out = distill_loss(logits, logits_c, TARGETS, PRIMARY, COMP, DistillLossConfig())
    ce = (_ce(ROWS[1], 0) + _ce(ROWS[2], 2)) / 2
    ce_c = _ce(ROWS_C[3], 2)
    h = _h(ROWS[1], 0.5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["ce_comp"].item() == pytest.approx(ce_c, rel=1e-6)
    assert out["entropy"].item() == pytest.approx(h, rel=1e-6)
    assert out["entropy_comp"].item() == 0.0
    assert out["loss"].item() == pytest.approx((ce + ce_c + 2.0 * h) / 4, rel=1e-6)
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0 and logits_c.grad.abs().sum() > 0


def test_distill_loss_dream_entropy_on_both_passes():
    logits = torch.tensor([ROWS])
    logits_c = torch.tensor([ROWS_C])
    cfg = DistillLossConfig(entropy_weight=1.0, entropy_on_complementary=True)
    out = distill_loss(logits, logits_c, TARGETS, PRIMARY, COMP2, cfg)
    ce = (_ce(ROWS[1], 0) + _ce(ROWS[2], 2)) / 2
    ce_c = (_ce(ROWS_C[2], 2) + _ce(ROWS_C[3], 2)) / 2
    h, h_c = _h(ROWS[1], 0.5), _h(ROWS_C[2], 0.5)  # ROWS_C pos 3 is wrong -> excluded
    assert out["entropy_comp"].item() == pytest.approx(h_c, rel=1e-6)
    assert out["loss"].item() == pytest.approx((ce + ce_c + h + h_c) / 4, rel=1e-6)


def test_distill_loss_switches():
    logits = torch.tensor([ROWS], requires_grad=True)
    ce = (_ce(ROWS[1], 0) + _ce(ROWS[2], 2)) / 2
    h = _h(ROWS[1], 0.5)
    # Dream-Coder: no complementary pass (logits_comp may be None), (CE + H) / 4.
    out = distill_loss(logits, None, TARGETS, PRIMARY, COMP, DistillLossConfig(False, 1.0))
    assert out["ce_comp"].item() == 0.0 and out["entropy_comp"].item() == 0.0
    assert out["loss"].item() == pytest.approx((ce + h) / 4, rel=1e-6)
    # Entropy weight 0: entropy reported as 0 and absent from the total.
    out = distill_loss(logits, None, TARGETS, PRIMARY, COMP, DistillLossConfig(False, 0.0, scale=1.0))
    assert out["entropy"].item() == 0.0
    assert out["loss"].item() == pytest.approx(ce, rel=1e-6)
    out["loss"].backward()
    with pytest.raises(ValueError):
        distill_loss(logits, None, TARGETS, PRIMARY, COMP, DistillLossConfig())


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("e", "sizes", "expected"),
    [
        (0.5, [16, 16, 24, 24, 32, 32], 16),
        (1.5, [16, 16, 24, 24, 32, 32], 20),
        (2.0, [16, 16, 24, 24, 32, 32], 24),
        (3.25, [16, 16, 24, 24, 32, 32], 26),
        (5.9, [16, 16, 24, 24, 32, 32], 32),
        (9.0, [16, 16, 24, 24, 32, 32], 32),
        (0.5, [8, 16], 12),
        (1.2, [8, 16], 16),
        (0.0, [16, 24, 32], 16),
        (1.99, [16, 24, 32], 31),
    ],
)
def test_window_size_known_values(e: float, sizes: list[int], expected: int):
    assert window_size(e, sizes) == expected


def test_mask_ratio_bounds_and_sampling():
    assert mask_ratio_bounds(0.0) == pytest.approx((0.0, 0.8))
    assert mask_ratio_bounds(0.5) == pytest.approx((0.4, 0.8))
    assert mask_ratio_bounds(1.0) == pytest.approx((0.8, 0.8))
    assert mask_ratio_bounds(2.0) == pytest.approx((0.8, 0.8))
    assert mask_ratio_bounds(0.5, r_min=0.2, r_max=0.6) == pytest.approx((0.4, 0.6))
    g = torch.Generator().manual_seed(4)
    for progress in (0.0, 0.3, 0.75, 1.0):
        low, high = mask_ratio_bounds(progress)
        draws = [sample_mask_ratio(progress, 0.0, 0.8, generator=g) for _ in range(200)]
        assert all(low <= r <= high for r in draws)
        if high > low:  # actually spread over the interval, not a constant
            assert max(draws) - min(draws) > 0.5 * (high - low)
