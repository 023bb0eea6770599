"""SFT noising, masked CE and the LR schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from d3llm_pipeline.objectives.losses import masked_cross_entropy
from d3llm_pipeline.objectives.schedules import lr_multiplier
from d3llm_pipeline.objectives.sft import MIN_NOISE, sft_noise, stratified_noise_levels

MASK = 1


def test_prompt_is_never_masked_and_rate_follows_t():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (64, 88), generator=g)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 24:] = True
    t = torch.linspace(0.05, 1.0, 64)
    noisy, masked = sft_noise(ids, maskable, MASK, generator=g, t=t)
    assert not masked[:, :24].any()
    assert torch.equal(noisy[:, :24], ids[:, :24])
    assert torch.equal(noisy[masked], torch.full_like(noisy[masked], MASK))
    assert torch.equal(noisy[~masked], ids[~masked])
    assert masked[-1, 24:].all()  # t = 1 masks the whole response
    # Per-sample masked fraction tracks t (64 positions each: binomial std <= 0.0625).
    frac = masked[:, 24:].float().mean(1)
    assert (frac - t).abs().mean() < 0.05


def test_stratified_levels_cover_each_stratum_once():
    t = stratified_noise_levels(8, generator=torch.Generator().manual_seed(3))
    strata = torch.sort((t * 8).floor().clamp(max=7)).values
    assert torch.equal(strata, torch.arange(8, dtype=strata.dtype))
    assert (t >= MIN_NOISE).all() and (t <= 1).all()


def test_a_ranks_noise_is_its_rows_of_the_one_process_draw():
    ids = torch.randint(4, 40, (8, 30), generator=torch.Generator().manual_seed(1))
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 10:] = True
    whole = sft_noise(ids, maskable, MASK, generator=torch.Generator().manual_seed(5))
    for rank in range(4):  # 4 ranks of 2 rows, each with the same (seed, step) generator
        rows = slice(2 * rank, 2 * rank + 2)
        part = sft_noise(ids[rows], maskable[rows], MASK, generator=torch.Generator().manual_seed(5),
                         row_offset=2 * rank, total_rows=8)
        assert torch.equal(part[0], whole[0][rows]) and torch.equal(part[1], whole[1][rows])
    with pytest.raises(ValueError, match="not inside a batch of 8"):
        sft_noise(ids[:2], maskable[:2], MASK, row_offset=7, total_rows=8)


def test_masked_cross_entropy_matches_hand_value():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    logits[0, 2] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    targets = torch.tensor([[0, 3, 1]])
    masked = torch.tensor([[True, False, True]])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 3))
    ce2 = -math.log(math.e / (math.e + 3))
    assert masked_cross_entropy(logits, targets, masked).item() == pytest.approx((ce0 + ce2) / 2, abs=1e-6)
    full = F.cross_entropy(logits[0], targets[0], reduction="none")
    assert masked_cross_entropy(logits, targets, masked).item() == pytest.approx(full[[0, 2]].mean().item())


def test_masked_cross_entropy_of_clean_batch_is_zero_with_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1 / 50), (49, 1.0), (50, 1.0), (775, 0.1 + 0.9 * 0.5), (1500, 0.1), (3000, 0.1)],
)
def test_lr_multiplier_warmup_then_cosine(step, expected):
    assert lr_multiplier(step, warmup_steps=50, total_steps=1500, min_ratio=0.1) == pytest.approx(expected)
