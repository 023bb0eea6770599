"""The embedded tiny teacher: bidirectional attention, HF save/load round trip, logit alignment."""

from __future__ import annotations

import pytest
import torch

from d3llm_pipeline.models.adapter import DiffusionLM, HFDiffusionAdapter, align_logits
from d3llm_pipeline.models.tiny import build_tiny_teacher, load_tiny_teacher, save_tiny_teacher


@pytest.fixture
def lm(tokenizer):
    return build_tiny_teacher(tokenizer, max_positions=40, n_embd=32, n_layer=2, n_head=2, seed=0).eval()


def test_adapter_satisfies_protocol_and_token_ids(lm, tokenizer):
    assert isinstance(lm, DiffusionLM)
    assert (lm.pad_token_id, lm.mask_token_id, lm.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[MASK]", "[EOS]", "[SEP]"]


@torch.no_grad()
def test_attention_is_bidirectional(lm):
    ids = torch.randint(4, 40, (2, 40), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 35] = (changed[:, 35] + 1 - 4) % 36 + 4  # a different real token at a late position
    a, b = lm.logits(ids), lm.logits(changed)
    # A causal model would leave positions < 35 untouched; a denoiser must see the future.
    assert (a[:, :35] - b[:, :35]).abs().amax() > 1e-4


@torch.no_grad()
def test_save_load_gives_identical_logits(lm, tokenizer, tmp_path):
    save_tiny_teacher(lm, tokenizer, tmp_path / "teacher")
    loaded, tok2 = load_tiny_teacher(tmp_path / "teacher")
    ids = torch.randint(0, len(tokenizer), (3, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(lm.logits(ids), loaded.logits(ids))
    assert tok2.get_vocab() == tokenizer.get_vocab()
    assert loaded.model.config.is_causal is False


def test_load_refuses_a_causal_checkpoint(lm, tokenizer, tmp_path):
    lm.model.config.is_causal = True
    save_tiny_teacher(lm, tokenizer, tmp_path / "causal")
    with pytest.raises(ValueError, match="causal"):
        load_tiny_teacher(tmp_path / "causal")


def test_shifted_logits_align_prediction_for_token_i_at_i():
    raw = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    shifted = align_logits(raw, shift=True)
    assert torch.equal(shifted[:, 1:], raw[:, :-1])  # Dream: output i-1 predicts token i
    assert torch.equal(shifted[:, 0], raw[:, 0])
    assert torch.equal(align_logits(raw, shift=False), raw)


@torch.no_grad()
def test_adapter_applies_shift_flag(lm):
    ids = torch.randint(4, 40, (1, 40), generator=torch.Generator().manual_seed(2))
    dream_like = HFDiffusionAdapter(lm.model, 1, 2, 0, shift_logits=True)
    assert torch.equal(dream_like.logits(ids)[:, 1:], lm.logits(ids)[:, :-1])
