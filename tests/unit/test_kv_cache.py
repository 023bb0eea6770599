"""Prefix KV cache with delayed caching and refresh (decoding/prefix_cache.py) inside d3LLM multi-block decoding.

Equivalences checked: a fresh cache reproduces the full forward (LLaDA- and Dream-aligned logits); with a refresh
every iteration the cached decoder equals the uncached one token for token; on a causal model (whose prefix
keys/values never depend on later tokens, so a cache is exact) the cached decoder equals the uncached one for
real delay/refresh settings while forwarding fewer positions. Batched == one-by-one with the cache on is in
test_multi_block.py.
"""

from __future__ import annotations

import pytest
import torch

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.decoding.prefix_cache import plan_forward, plan_forward_reference
from d3llm_pipeline.models.adapter import HFDiffusionAdapter

MASK, EOS, PAD, VOCAB = 1, 2, 0, 20
BASE = {"gen_length": 32, "block_size": 8, "score": "entropy", "rule": "d3llm"}


def spec(**kw) -> DecodeSpec:
    return DecodeSpec(**{**BASE, **kw})


def assert_same(a, b) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.nfe, b.nfe)
    assert torch.equal(a.unmask_step, b.unmask_step)


@pytest.fixture(scope="module")
def causal_lm():
    """A causal GPT-2 (float64): prefix K/V depend only on the prefix, so a prefix cache is exact."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
                     bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    model = GPT2LMHeadModel(cfg).double().eval()
    return HFDiffusionAdapter(model, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)


# ------------------------------------------------------------------------------------------ the plan
def test_plan_forward_by_hand():
    # Prompt 4, blocks of 8, 3 blocks, d = 2, R = 5. Rows:
    # 0: it=1, nothing complete, no cache -> full (no cache yet); prompt not settled (1 < 2) -> target 0.
    # 1: it=3, block 0 complete since it=1 (3-1 >= 2 settled), block 1 complete since 2 (stabilising),
    #    cache length 4 -> full (stabilising), target 4 + 8 = 12.
    # 2: it=4, block 0 first seen complete now (stamped 4, not settled), blocks 1-2 incomplete, cache 4
    #    -> stabilising -> full, target 4.
    # 3: it=6, block 0 settled, block 1 incomplete, cache 4 -> cached forward, target 12 (block 0 appended).
    # 4: it=10, same state as row 3 but 10 % 5 == 0 -> full (periodic refresh), target 12.
    masks = torch.tensor([[8, 8, 8], [0, 0, 8], [0, 3, 8], [0, 3, 8], [0, 3, 8]])
    completed_at = torch.tensor([[-1, -1, -1], [1, 2, -1], [-1, -1, -1], [2, -1, -1], [2, -1, -1]])
    length = torch.tensor([0, 4, 4, 4, 4])
    it = torch.tensor([1, 3, 4, 6, 10])
    stamped, target, full = plan_forward(masks, completed_at, length, it, 4, 8, delay=2, refresh=5)
    assert stamped.tolist() == [[-1, -1, -1], [1, 2, -1], [4, -1, -1], [2, -1, -1], [2, -1, -1]]
    assert target.tolist() == [0, 12, 4, 12, 12]
    assert full.tolist() == [True, True, True, False, True]
    # Delay 0: everything complete joins at once; nothing is ever stabilising.
    _, target0, full0 = plan_forward(masks, completed_at, length, it, 4, 8, delay=0, refresh=None)
    assert target0.tolist() == [4, 20, 12, 12, 12]
    assert full0.tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("scan_stops", [True, False])
def test_plan_forward_reference_by_hand(scan_stops):
    # The official cached decoders' plan; prompt 4, blocks of 8, 3 blocks, d = 2, R = 5. Rows:
    # 0: it=1, prompt complete since 0 (delay 1: stabilising), no cache -> full forward, nothing kept.
    # 1: it=2, the prompt settles -> appended: a forward from 0 keeps [0, 4).
    # 2: it=6, block 0 complete since 5 (stabilising), block 1 complete now -> full, length stays 4. LLaDA's
    #    scan stops at block 0 (block 1 unstamped), keeping [0, 4); Dream's stamps block 1 too and keeps
    #    [0, 12), the start of its last stabilising block: 12 entries for a tracked length of 4.
    # 3: it=7, Dream's state after row 2: block 0 settles -> cached forward from 4 appends 8 entries: 20 held.
    # 4: it=10, block 1 incomplete, refresh due -> full, keeps [0, 12).
    # 5: it=10, block 1 settles -> appending outranks the due refresh: cached from 12, length 20.
    # 6: it=7, block 0 settles while block 1 is complete (stamped now) -> a cached forward appends block 0
    #    (plan_forward, ours, runs a full forward here: the block right after the target is stabilising).
    masks = torch.tensor([[8, 8, 8], [8, 8, 8], [0, 0, 8], [0, 0, 8], [0, 3, 8], [0, 0, 8], [0, 0, 8]])
    stamps = torch.tensor([[-1, -1, -1], [-1, -1, -1], [5, -1, -1], [5, 6, -1], [2, -1, -1], [2, 8, -1],
                           [5, -1, -1]])
    length, phys = torch.tensor([0, 0, 4, 4, 12, 12, 4]), torch.tensor([0, 0, 4, 12, 12, 12, 4])
    it = torch.tensor([1, 2, 6, 7, 10, 10, 7])
    stamped, start, new_length, new_phys = plan_forward_reference(masks, stamps, length, phys, it, 4, 8, delay=2,
                                                                  refresh=5, scan_stops=scan_stops)
    assert stamped[2].tolist() == ([5, -1, -1] if scan_stops else [5, 6, -1])
    assert stamped[6].tolist() == [5, 7, -1]
    assert start.tolist() == [0, 0, 0, 4, 0, 12, 4]
    assert new_length.tolist() == [0, 4, 4, 12, 12, 20, 12]
    assert new_phys.tolist() == [0, 4, 4 if scan_stops else 12, 20, 12, 20, 12]
    _, _, full = plan_forward(masks[6:], stamps[6:], length[6:], it[6:], 4, 8, delay=2, refresh=5)
    assert full.tolist() == [True]


def test_own_first_gives_the_first_forwarded_position_its_own_output(gpt2_lm):
    # The official cached Dream decoder shifts a suffix's logits on their own: position `start` gets raw output
    # `start`. Also when start and start + 1 are both kept (that raw row serves two positions).
    lm = HFDiffusionAdapter(gpt2_lm.model, MASK, EOS, PAD, shift_logits=True)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    start = 5
    with torch.no_grad():
        raw = lm.model(input_ids=ids).logits  # (2, 12, V)
        _, kv = lm.forward_kv(ids, 0, None)
        past = [(k[:, :, :start], v[:, :, :start]) for k, v in kv]
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[0, [start, start + 1, 9]] = True
        keep[1, [start + 1, 10]] = True
        flat, _ = lm.forward_kv(ids, start, past, keep=keep, return_kv=False, own_first=True)
        whole, _ = lm.forward_kv(ids, start, past, return_kv=False, own_first=True)  # (2, 7, V)
    expected = torch.stack([raw[0, start], raw[0, start], raw[0, 8], raw[1, start], raw[1, 9]])
    assert torch.allclose(flat, expected, atol=1e-10)
    assert torch.allclose(whole[:, 0], raw[:, start], atol=1e-10)
    assert torch.allclose(whole[:, 1:], raw[:, start:-1], atol=1e-10)


# ------------------------------------------------------------------------------------- model level
@pytest.mark.parametrize("shift", [False, True])
def test_fresh_cache_reproduces_the_full_forward(gpt2_lm, shift):
    lm = HFDiffusionAdapter(gpt2_lm.model, MASK, EOS, PAD, shift_logits=shift)
    ids = torch.randint(3, VOCAB, (3, 30), generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(3, 30, dtype=torch.bool)
    keep[0, 20:23] = keep[1, 29] = keep[2, 12] = True
    with torch.no_grad():
        full = lm.logits(ids)  # (3, 30, V)
        assert torch.allclose(lm.logits(ids, keep=keep), full[keep], atol=1e-12)
        _, kv = lm.forward_kv(ids, 0, None)
        for start in (5, 12):
            past = [(k[:, :, :start], v[:, :, :start]) for k, v in kv]
            flat, new_kv = lm.forward_kv(ids, start, past, keep=keep)
            assert torch.allclose(flat, full[keep], atol=1e-12)
            assert torch.allclose(new_kv[0][0], kv[0][0][:, :, start:], atol=1e-12)
            suffix, _ = lm.forward_kv(ids, start, past, return_kv=False)
            assert torch.allclose(suffix, full[:, start:], atol=1e-12)


# ----------------------------------------------------------------------------------- decoder level
@pytest.mark.parametrize("threshold", [0.5, 2.0, 2.9])
@pytest.mark.parametrize("early_stop", [True, False])
def test_refresh_every_iteration_equals_the_uncached_decoder(gpt2_lm, prompts, threshold, early_stop):
    plain = decode(gpt2_lm, prompts, spec(threshold=threshold, early_stop=early_stop))
    # our plan: a due refresh outranks appending, so R=1 makes every forward full (the official plan's appends
    # outrank its refresh: D1 in docs/decoding.md)
    cached = decode(gpt2_lm, prompts, spec(threshold=threshold, early_stop=early_stop, kv_cache=True,
                                           cache_delay_iter=0, refresh_interval=1, cache_plan="ours"))
    assert_same(plain, cached)
    assert torch.equal(plain.forwarded, cached.forwarded)  # every forward was a full one


@pytest.mark.parametrize("delay,refresh", [(0, None), (1, None), (2, 3), (2, None)])
@pytest.mark.parametrize("shift,plan", [(False, "reference"), (False, "ours"), (True, "ours")])
def test_cache_is_exact_on_a_causal_model_and_forwards_less(causal_lm, prompts, delay, refresh, shift, plan):
    """On a causal model cached keys equal recomputed ones, so a plan that attends to the right positions decodes
    exactly as without the cache. With shifted logits (Dream) only ours: the official Dream plan gives the first
    forwarded position its own output, not the one before it (D3 in docs/decoding.md), as the official code does."""
    lm = HFDiffusionAdapter(causal_lm.model, MASK, EOS, PAD, shift_logits=shift)
    base = spec(threshold=2.0, early_stop=False)
    plain = decode(lm, prompts, base)
    cached = decode(lm, prompts, DecodeSpec(**{**base.__dict__, "kv_cache": True, "cache_delay_iter": delay,
                                              "refresh_interval": refresh, "cache_plan": plan}))
    assert_same(plain, cached)
    assert (cached.forwarded <= plain.forwarded).all()
    assert cached.forwarded.sum() < plain.forwarded.sum()


def test_a_long_delay_never_caches_a_block(gpt2_lm, prompts):
    # d = 1000: only the prompt could ever join (it does not either: it < d), so every forward is full.
    plain = decode(gpt2_lm, prompts, spec(threshold=2.0))
    cached = decode(gpt2_lm, prompts, spec(threshold=2.0, kv_cache=True, cache_delay_iter=1000))
    assert_same(plain, cached)
    assert torch.equal(plain.forwarded, cached.forwarded)


def test_cached_decoding_finishes_and_records_a_valid_order(gpt2_lm, prompts):
    result = decode(gpt2_lm, prompts, spec(threshold=2.0, kv_cache=True, cache_delay_iter=1, early_stop=False))
    gen = result.sequences[:, prompts.shape[1]:]
    assert not (gen == MASK).any()
    assert (result.forwarded <= (6 + 32) * result.nfe).all()  # never more than a full forward each
    assert (result.unmask_step >= 0).all() and (result.unmask_step < result.nfe[:, None]).all()
