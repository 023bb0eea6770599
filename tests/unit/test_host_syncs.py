"""Host syncs: every decoder makes at most one device -> host synchronisation per forward (issue 12, item 1).

Counted with decoding/sync_counter.py on the CPU, where it counts what would stall a GPU (value reads,
data-dependent shapes, uploads). Also checked: the counter itself on known ops, the model's logits taken by a
known count equal the boolean-mask ones bit for bit, and the statically known first step of the multi-block
decoder is what its block update computes.
"""

from __future__ import annotations

import pytest
import torch
from conftest import OFFICIAL

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.decoding.multi_block import _first_open_blocks, _update_blocks
from d3llm_pipeline.decoding.sync_counter import SyncCounter

BASE = {"gen_length": 32, "block_size": 8}
DECODERS = {
    "vanilla": DecodeSpec(**BASE, rule="vanilla", score="confidence"),
    "threshold": DecodeSpec(**BASE, rule="threshold", threshold=0.4),
    "d3llm": DecodeSpec(**BASE, rule="d3llm", threshold=0.4),
    "d3llm+cache": DecodeSpec(**BASE, rule="d3llm", threshold=0.4, kv_cache=True, refresh_interval=3),
    "d3llm+cache reference": DecodeSpec(**BASE, rule="d3llm", threshold=0.4, kv_cache=True, refresh_interval=3,
                                        cache_plan="reference"),
}


def count_syncs(lm, prompts, spec, **kw):
    with SyncCounter("cpu") as syncs:
        result = decode(lm, prompts, spec, **kw)
    return result, syncs


# ------------------------------------------------------------------------------------------ the counter
def test_counter_sees_reads_shapes_and_uploads_and_nothing_else():
    x = torch.arange(6.0)
    mask = x > 2
    with SyncCounter("cpu") as syncs:
        y = (x * 2 + 1).softmax(0).cumsum(0)  # pure device work
        y.index_select(0, torch.arange(3))
        mask.nonzero_static(size=3)
    assert syncs.total == 0
    with SyncCounter("cpu") as syncs:
        x.sum().item()
        bool(mask.any())
        x.tolist()
        x.cpu()
        mask.nonzero()
        x[mask]
        torch.tensor([1, 2])
    assert syncs.by_kind == {"read": 4, "shape": 2, "upload": 1}, syncs.events
    assert torch.Tensor.tolist is not None and "method" not in torch.Tensor.tolist.__qualname__  # restored


# ------------------------------------------------------------------------------------------ decoders
@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("batch", [1, 5])
def test_at_most_one_sync_per_forward(gpt2_lm, prompts, name, batch):
    result, syncs = count_syncs(gpt2_lm, prompts[:batch], DECODERS[name])
    forwards = int(result.nfe.max())  # iterations: every active row shares one forward per iteration
    assert forwards > 1
    assert 1 <= syncs.total <= forwards, syncs.events


@pytest.mark.parametrize("name", ["threshold", "d3llm+cache"])
def test_sampling_and_an_unpadded_mask_add_no_per_forward_sync(gpt2_lm, prompts, name):
    from dataclasses import replace

    spec = replace(DECODERS[name], temperature=1.0, seed=3)
    plain, syncs_plain = count_syncs(gpt2_lm, prompts, spec)
    masked, syncs = count_syncs(gpt2_lm, prompts, spec, prompt_attention_mask=torch.ones_like(prompts))
    assert torch.equal(plain.sequences, masked.sequences)
    assert syncs_plain.total <= int(plain.nfe.max())
    assert syncs.total <= int(masked.nfe.max()) + 1  # + the one read that drops an all-ones mask


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_real_families_one_sync_per_forward(family):
    from d3llm_pipeline.models.families import load_model

    lm, _ = load_model(OFFICIAL / f"{family}_tiny", family)
    prompts = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    for name in ("threshold", "d3llm", "d3llm+cache", "d3llm+cache reference"):
        result, syncs = count_syncs(lm, prompts, DECODERS[name])
        assert syncs.total <= int(result.nfe.max()), (name, syncs.events)


# ------------------------------------------------------------------------------------------ what makes it possible
@pytest.mark.parametrize("shift", [False, True])
def test_logits_by_count_equal_the_boolean_mask_ones(gpt2_lm, shift):
    lm = gpt2_lm
    lm.shift_logits, old = shift, lm.shift_logits
    try:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 20, (3, 16), generator=g)
        keep = torch.rand(3, 16, generator=g) < 0.4
        keep[:, :2] = False  # position 0 is prompt; and nothing before start=2 below
        n = int(keep.sum())
        assert torch.equal(lm.logits(ids, keep=keep, keep_count=n), lm.logits(ids, keep=keep))
        _, kv = lm.forward_kv(ids, 0, None)
        past = [(k[:, :, :2], v[:, :, :2]) for k, v in kv]
        for own_first in ([False, True] if shift else [False]):
            by_mask, _ = lm.forward_kv(ids, 2, past, keep=keep, return_kv=False, own_first=own_first)
            by_count, _ = lm.forward_kv(ids, 2, past, keep=keep, return_kv=False, own_first=own_first, keep_count=n)
            assert torch.equal(by_count, by_mask)
    finally:
        lm.shift_logits = old


@pytest.mark.parametrize("add", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("n_blocks", [1, 2, 4])
def test_first_step_is_known_without_reading_the_device(add, n_blocks):
    spec = DecodeSpec(gen_length=4 * n_blocks, block_size=4, rule="d3llm", block_add_threshold=add)
    gen = torch.full((2, spec.gen_length), 1)
    opened = torch.zeros(2, n_blocks, dtype=torch.bool)
    opened[:, 0] = True
    _update_blocks(gen == 1, gen, opened, opened.clone(), spec, eos_id=2)
    assert opened.sum(-1).tolist() == [_first_open_blocks(spec, n_blocks)] * 2


def test_block_add_threshold_zero_decodes_batched_as_one_by_one(gpt2_lm, prompts):
    spec = DecodeSpec(**BASE, rule="d3llm", threshold=0.4, block_add_threshold=0.0, kv_cache=True)
    batched, syncs = count_syncs(gpt2_lm, prompts, spec)
    assert syncs.total <= int(batched.nfe.max())
    for i in range(len(prompts)):
        alone = decode(gpt2_lm, prompts[i : i + 1], spec)
        assert torch.equal(alone.sequences[0], batched.sequences[i])
        assert torch.equal(alone.nfe[0], batched.nfe[i])


def test_logits_by_count_when_the_head_bypasses_its_module():
    """A model whose head never calls the output-embedding module (remote code, a tied F.linear): rows are then
    picked from its full logits, still without a boolean mask."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from d3llm_pipeline.models.adapter import HFDiffusionAdapter

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=32, n_embd=16, n_layer=1, n_head=2)).double()
    lm = HFDiffusionAdapter(model.eval(), mask_token_id=1, eos_token_id=2, pad_token_id=0)
    ids = torch.randint(3, 20, (2, 10), generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(2, 10, dtype=torch.bool)
    keep[0, 3:6], keep[1, 7] = True, True
    expected = lm.logits(ids, keep=keep)
    model.get_output_embeddings()._forward_pre_hooks.clear()  # the hook never fires now
    with SyncCounter("cpu") as syncs:
        got = lm.logits(ids, keep=keep, keep_count=4)
    assert torch.equal(got, expected) and syncs.total == 0
