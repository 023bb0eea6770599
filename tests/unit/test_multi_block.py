"""d3LLM multi-block decoding: reduces to single-block threshold decoding, batch invariance, block states."""

from __future__ import annotations

import pytest
import torch

from d3llm_pipeline.decoding import DecodeSpec, decode

BASE = {"gen_length": 32, "block_size": 8, "score": "entropy"}


def multi(**kw) -> DecodeSpec:
    return DecodeSpec(rule="d3llm", **{**BASE, **kw})


@pytest.mark.parametrize("threshold", [0.5, 2.0, 2.9])
@pytest.mark.parametrize("early_stop", [True, False])
def test_add_and_decode_thresholds_of_one_equal_single_block_threshold(gpt2_lm, prompts, threshold, early_stop):
    single = decode(gpt2_lm, prompts, DecodeSpec(rule="threshold", threshold=threshold, early_stop=early_stop,
                                                 **BASE))
    blocks = decode(gpt2_lm, prompts, multi(threshold=threshold, early_stop=early_stop, block_add_threshold=1.0,
                                            decoded_token_threshold=1.0))
    assert torch.equal(single.sequences, blocks.sequences)
    assert torch.equal(single.nfe, blocks.nfe)
    assert torch.equal(single.unmask_step, blocks.unmask_step)


@pytest.mark.parametrize("spec", [multi(threshold=2.0), multi(threshold=2.9, early_stop=False),
                                  multi(threshold=2.5, accept_global_best=True), multi(threshold=2.5, temperature=1.0),
                                  # with the prefix KV cache (samples are grouped by cache length per forward)
                                  multi(threshold=2.0, kv_cache=True, cache_delay_iter=1),
                                  multi(threshold=2.5, temperature=1.0, kv_cache=True, cache_delay_iter=1),
                                  multi(threshold=2.9, early_stop=False, kv_cache=True, cache_delay_iter=1,
                                        refresh_interval=4),
                                  # the official plan (tests/integration/test_official_decode.py) and float64 entropies
                                  multi(threshold=2.5, temperature=1.0, kv_cache=True, cache_delay_iter=1,
                                        refresh_interval=3, cache_plan="reference", entropy_dtype="float64")])
def test_batched_equals_one_by_one(gpt2_lm, prompts, spec):
    keys = torch.arange(10, 10 + prompts.shape[0])
    batched = decode(gpt2_lm, prompts, spec, sample_keys=keys)
    for b in range(prompts.shape[0]):
        alone = decode(gpt2_lm, prompts[b : b + 1], spec, sample_keys=keys[b : b + 1])
        assert torch.equal(batched.sequences[b : b + 1], alone.sequences)
        assert torch.equal(batched.nfe[b : b + 1], alone.nfe)
        assert torch.equal(batched.unmask_step[b : b + 1], alone.unmask_step)
        assert torch.equal(batched.forwarded[b : b + 1], alone.forwarded)


def test_several_blocks_decode_at_once_and_save_forwards(gpt2_lm, prompts):
    # τ = 2.0 sits inside this model's entropy range (about 1.99-2.23 nats at the first step), so blocks fill
    # partially and later blocks open (at 10% progress) before earlier ones finish.
    single = decode(gpt2_lm, prompts, DecodeSpec(rule="threshold", threshold=2.0, early_stop=False, **BASE))
    blocks = decode(gpt2_lm, prompts, multi(threshold=2.0, early_stop=False, block_add_threshold=0.1,
                                            decoded_token_threshold=0.95))
    block_of = torch.arange(32) // 8
    overlapped = False
    for row in blocks.unmask_step:  # some forward revealed tokens in two different blocks
        for step in row.unique():
            overlapped |= block_of[row == step].unique().numel() > 1
    assert overlapped
    assert blocks.nfe.sum() < single.nfe.sum()
    assert not (blocks.sequences[:, 6:] == 1).any()  # finished: no MASK left
    assert (blocks.unmask_step >= 0).all() and (blocks.unmask_step < blocks.nfe[:, None]).all()
