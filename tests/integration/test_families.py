"""Real dLLM families loaded natively: the forward equals the official d3LLM code's on official-format checkpoints.

The fixtures (`tests/fixtures/official/{llada_tiny,dream_tiny}`, see their README) are 2-layer, 32-wide
checkpoints in the official formats with bf16 weights, plus what the official code computed on them in float32.
We load them in float32 into stock Llama / Qwen2 modules and compare: argmax at every position, entropy and
log-sum-exp (float64, nats) within 1e-3, five full logit rows within 2e-3; also through the prefix KV cache, with
bool-mask logits_to_keep, and with eager attention. Batch 1 throughout: the vocabularies are 126k / 152k.
"""

from __future__ import annotations

import pytest
import torch
from conftest import OFFICIAL

from d3llm_pipeline.models.families import family_of, get_family, load_model

FAMS = ["llada", "dream"]
INPUTS = ["masked", "half"]


@pytest.fixture(scope="module")
def models():
    """family -> (fp32 adapter, sdpa), loaded once per module."""
    return {fam: load_model(OFFICIAL / f"{fam}_tiny", fam, dtype="float32")[0] for fam in FAMS}


@pytest.fixture(scope="module")
def refs():
    from safetensors.torch import load_file

    return {fam: load_file(str(OFFICIAL / f"{fam}_tiny" / "reference" / "forward.safetensors")) for fam in FAMS}


def stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(argmax, entropy in nats, log-sum-exp) per row of (L, V) logits, computed in float64 like the reference."""
    x = logits.double()
    lse = x.logsumexp(-1)
    logp = x - lse[:, None]
    return x.argmax(-1), -(logp.exp() * logp).sum(-1), lse


def assert_matches_reference(raw: torch.Tensor, ref: dict, name: str) -> None:
    """raw: (L, V) model outputs in the official layout (Dream: output i predicts token i+1)."""
    argmax, entropy, lse = stats(raw)
    assert torch.equal(argmax, ref[f"{name}/argmax"])
    assert (entropy - ref[f"{name}/entropy"].double()).abs().max() < 1e-3
    assert (lse - ref[f"{name}/logsumexp"].double()).abs().max() < 1e-3
    assert (raw[ref[f"{name}/rows"]] - ref[f"{name}/logits_rows"]).abs().max() < 2e-3


# ------------------------------------------------------------------------------- the registry
def test_registry_matches_the_schema_and_detects_by_model_type():
    assert family_of(OFFICIAL / "llada_tiny") is get_family("llada")
    assert family_of(OFFICIAL / "dream_tiny") is get_family("dream")
    assert get_family("tiny").detect({"model_type": "gpt2"}) and not get_family("llada").detect({"model_type": "x"})


def test_special_ids_alignment_lora_and_positions_per_family(models):
    llada, dream = models["llada"], models["dream"]
    assert (llada.mask_token_id, llada.eos_token_id, llada.pad_token_id, llada.eot_token_id) == (
        126336, 126081, 126081, 126348)
    assert (dream.mask_token_id, dream.eos_token_id, dream.pad_token_id, dream.eot_token_id) == (
        151666, 151643, 151643, 151645)
    assert not llada.shift_logits and dream.shift_logits
    # config.json wins over the defaults; absent keys fall back to method.md §7's values
    assert get_family("llada").special_ids({"mask_token_id": 7, "eos_token_id": [8, 9]}).mask == 7
    assert get_family("llada").special_ids({"eos_token_id": [8, 9]}).eos == 8
    assert get_family("dream").special_ids({}).pad == 151643
    seven = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert get_family("llada").lora_targets == get_family("dream").lora_targets == seven
    assert get_family("tiny").lora_targets == ("c_attn", "c_proj", "c_fc") and get_family("tiny").lora_fan_in_fan_out
    for fam in FAMS:
        names = {n.rsplit(".", 1)[-1] for n, _ in models[fam].model.named_modules()}
        assert set(seven) <= names and not get_family(fam).lora_fan_in_fan_out
    assert get_family("llada").max_positions({"max_sequence_length": 4096}) == 4096
    assert get_family("dream").max_positions({"max_position_embeddings": 131072}) == 131072


def test_native_modules_without_remote_code(models):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    assert type(models["llada"].model) is LlamaForCausalLM and type(models["dream"].model) is Qwen2ForCausalLM
    for fam in FAMS:
        model = models[fam].model
        assert model.config.is_causal is False and model.dtype == torch.float32
        assert model.config._attn_implementation == "sdpa" and not model.config.tie_word_embeddings
        assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert models["dream"].model.model.layers[0].self_attn.q_proj.bias is not None  # Dream's q/k/v biases
    assert models["llada"].model.model.layers[0].self_attn.q_proj.bias is None


# ----------------------------------------------------------------------- forward == official code
@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("fam", FAMS)
def test_forward_equals_the_official_code(models, refs, fam, name):
    ids = refs[fam][f"{name}/input_ids"][None]  # (1, 88)
    with torch.no_grad():
        raw = models[fam].model(input_ids=ids).logits[0]  # (L, V), the official layout
    assert_matches_reference(raw, refs[fam], name)


@pytest.mark.parametrize("fam", FAMS)
def test_adapter_aligns_logits_as_the_family_says(models, refs, fam):
    lm = models[fam]
    ids = refs[fam]["half/input_ids"][None]
    with torch.no_grad():
        raw, aligned = lm.model(input_ids=ids).logits, lm.logits(ids)  # (1, L, V) each
    if fam == "dream":  # aligned i = raw i-1: the prediction for token i; position 0 reuses its own output
        assert torch.equal(aligned[:, 1:], raw[:, :-1]) and torch.equal(aligned[:, 0], raw[:, 0])
        ref = refs[fam]
        assert (aligned[0, ref["half/rows"][1:4] + 1] - ref["half/logits_rows"][1:4]).abs().max() < 2e-3
    else:
        assert torch.equal(aligned, raw)


@pytest.mark.parametrize("fam", FAMS)
def test_attention_is_bidirectional_in_sdpa_and_eager(models, refs, fam):
    eager = load_model(OFFICIAL / f"{fam}_tiny", fam, attn_implementation="eager")[0]
    assert eager.model.config._attn_implementation == "eager"
    ids = refs[fam]["masked/input_ids"][None]
    changed = ids.clone()
    changed[0, -1] = 1234  # a late token
    with torch.no_grad():
        for lm in (models[fam], eager):
            first, second = lm.model(input_ids=ids).logits, lm.model(input_ids=changed).logits
            assert (first[0, 0] - second[0, 0]).abs().max() > 1e-3  # ... changes the first position's logits
        assert (eager.model(input_ids=ids).logits - first).abs().max() < 1e-4
    assert_matches_reference(eager.model(input_ids=ids).logits[0].detach(), refs[fam], "masked")


# ------------------------------------------------------------------------- keep mask and KV cache
@pytest.mark.parametrize("fam", FAMS)
def test_bool_mask_logits_to_keep(models, refs, fam):
    lm = models[fam]
    ids = refs[fam]["half/input_ids"][None]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, [1, 24, 25, 60, 87]] = True
    with torch.no_grad():
        full = lm.logits(ids)  # (1, L, V)
        flat = lm.logits(ids, keep=keep)  # (5, V)
    assert flat.shape == (5, full.shape[-1])
    assert (flat - full[keep]).abs().max() < 1e-5


@pytest.mark.parametrize("start", [24, 56])
@pytest.mark.parametrize("fam", FAMS)
def test_prefix_kv_cache_equals_the_full_forward(models, refs, fam, start):
    """forward_kv of [start, L) on the cached K/V of [0, start) (from a full forward) == the full forward's rows."""
    lm, ref = models[fam], refs[fam]
    ids = ref["half/input_ids"][None]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, [start, start + 1, start + 7, ids.shape[1] - 1]] = True
    with torch.no_grad():
        full = lm.logits(ids)  # (1, L, V) aligned
        _, kv = lm.forward_kv(ids, 0, None)
        prefix = [(k[:, :, :start], v[:, :, :start]) for k, v in kv]
        cached, kv_suffix = lm.forward_kv(ids, start, prefix)  # (1, L - start, V)
        flat, _ = lm.forward_kv(ids, start, prefix, keep=keep, return_kv=False)
    assert (cached - full[:, start:]).abs().max() < 1e-4
    assert (flat - full[keep]).abs().max() < 1e-4
    for (k, v), (k_full, v_full) in zip(kv_suffix, kv, strict=True):
        assert (k - k_full[:, :, start:]).abs().max() < 1e-4 and (v - v_full[:, :, start:]).abs().max() < 1e-4
    # and against the official rows directly (aligned position = raw row + 1 for Dream)
    shift = int(lm.shift_logits)
    rows = [(i, int(r)) for i, r in enumerate(ref["half/rows"]) if start <= int(r) + shift < ids.shape[1]]
    assert rows
    for i, r in rows:
        assert (cached[0, r + shift - start] - ref["half/logits_rows"][i]).abs().max() < 2e-3


# ----------------------------------------------------------------------------- loading mechanics
def test_sharded_checkpoint_loads_shard_by_shard(tmp_path, models, monkeypatch):
    """model.safetensors.index.json + 2 shards == the single file; every tensor is read exactly once."""
    import json

    import safetensors
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(OFFICIAL / "llada_tiny" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(tmp_path / file), metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text((OFFICIAL / "llada_tiny" / "config.json").read_text())

    reads: list[str] = []
    real_open = safetensors.safe_open

    class CountingOpen:
        def __init__(self, file, **kw):
            self.inner = real_open(file, **kw)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            reads.append(name)
            return self.handle.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", CountingOpen)
    lm, tokenizer = load_model(tmp_path, "llada")
    assert tokenizer is None  # the fixtures ship no tokenizer
    assert sorted(reads) == names
    ids = torch.arange(100, 140)[None]
    with torch.no_grad():
        assert torch.equal(lm.logits(ids), models["llada"].logits(ids))


def test_bfloat16_loads_in_bfloat16(refs):
    lm, _ = load_model(OFFICIAL / "dream_tiny", "dream", dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    ids = refs["dream"]["masked/input_ids"][None]
    with torch.no_grad():
        raw = lm.model(input_ids=ids).logits[0].float()
    # bf16 compute: close to the fp32 reference, not equal
    assert (raw[refs["dream"]["masked/rows"]] - refs["dream"]["masked/logits_rows"]).abs().max() < 0.5
