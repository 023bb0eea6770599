"""The 8B LoRA memory estimate (models/memory.py) and the preset shapes it reads (models/families/shapes.py).

Arithmetic checked by hand on a 2-layer, 64-wide LLaDA-shaped model; the published shapes give the README's
parameter counts; the CLI prints every strategy.
"""

from __future__ import annotations

import pytest

from d3llm_pipeline.models.families.shapes import meta_model_of
from d3llm_pipeline.models.memory import estimate, main, shape_of

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny():
    # LLaDA layout at layers 2, hidden 64 (1 head of 64, no GQA), MLP 12288 * 64 / 4096 = 192, vocab 100
    return shape_of(meta_model_of("llada_8b_instruct", layers=2, hidden=64, vocab=100), 4, TARGETS)


def test_shape_by_hand(tiny):
    per_layer = 4 * 64 * 64 + 3 * 64 * 192 + 2 * 64  # q k v o, gate up down, two RMSNorm weights
    assert tiny.params == 100 * 64 * 2 + 64 + 2 * per_layer  # embedding + untied head + final norm + layers
    assert tiny.layer_params == per_layer
    # r (in + out): 4 x (64 + 64) for q k v o, 4 x (64 + 192) for gate and up, 4 x (192 + 64) for down; 2 layers
    assert tiny.lora_params == 2 * (4 * 4 * 128 + 2 * 4 * 256 + 4 * 256)
    assert (tiny.layers, tiny.hidden, tiny.kv_hidden, tiny.intermediate, tiny.vocab) == (2, 64, 64, 192, 100)


def test_estimate_by_hand(tiny):
    # batch 2 x (6 + 10) tokens, two passes: 64 tokens per step; bf16 compute (2 bytes)
    per_layer = (7 * 64 + 3 * 64 + 4 * 192 + 7 * 4) * 2  # 1436 elements
    full = estimate(tiny, 4, "gpu", batch=2, prompt=6, gen=10, checkpointing=False)
    assert full.weights == tiny.params * 2
    assert full.lora_states == tiny.lora_params * 16
    assert full.activations == 64 * 2 * per_layer
    assert full.logits == 2 * 10 * 100 * 10
    assert full.total == full.weights + full.lora_states + full.activations + full.logits
    ckpt = estimate(tiny, 4, "gpu", batch=2, prompt=6, gen=10, checkpointing=True)
    assert ckpt.activations == 64 * (2 * 64 * 2 + per_layer)  # layer inputs + one layer recomputed
    cpu = estimate(tiny, 4, "cpu", batch=2, prompt=6, gen=10, checkpointing=False)
    assert cpu.activations == 2 * full.activations  # fp32 compute


def test_strategies_share_what_they_should(tiny):
    gpu = estimate(tiny, 4, "gpu", devices=8, batch=2)
    ddp = estimate(tiny, 4, "ddp", devices=8, batch=2)
    fsdp = estimate(tiny, 4, "fsdp", devices=8, batch=2, fsdp_wrap="none")
    layer = estimate(tiny, 4, "fsdp", devices=8, batch=2)  # trainer=fsdp's default: fsdp_wrap=layer
    assert gpu.devices == 1 and ddp == estimate(tiny, 4, "ddp", devices=8, batch=2)
    assert ddp.total == gpu.total and ddp.devices == 8  # DDP replicates everything
    # unwrapped FSDP stores float32 shards (its one flattened unit holds the fp32 LoRA too), whatever the bf16 dtype
    # says; layer wrapping gives the LoRA units of their own, so the frozen shards keep the bf16 dtype
    assert fsdp.weights == tiny.params * 4 / 8 == 2 * ddp.weights / 8 and fsdp.lora_states == ddp.lora_states / 8
    assert layer.weights == ddp.weights / 8 and layer.lora_states == fsdp.lora_states
    # no wrap policy: the whole model gathered in bf16, and its one unit mixes frozen and LoRA weights, so FSDP1 keeps
    # a whole-model gradient: unsharded in bf16 during backward, then a float32 shard
    assert fsdp.gathered == tiny.params * 2 + tiny.params * 2 + tiny.params * 4 / 8
    assert layer.gathered == 2 * tiny.layer_params * 2  # one layer computing, the next prefetched (bf16)
    with pytest.raises(ValueError, match="--strategy"):
        estimate(tiny, 4, "zero3")


def test_published_shapes_and_cli(capsys):
    assert sum(p.numel() for p in meta_model_of("llada_8b_instruct").parameters()) == 8_015_581_184
    assert sum(p.numel() for p in meta_model_of("dream_7b_instruct").parameters()) == 7_615_616_512
    big = shape_of(meta_model_of("llada_8b_instruct"), 256, TARGETS)
    ddp, fsdp = (estimate(big, 256, s, devices=8, batch=4) for s in ("ddp", "fsdp"))
    fsdp = estimate(big, 256, "fsdp", devices=8, batch=4, fsdp_wrap="none")
    layer = estimate(big, 256, "fsdp", devices=8, batch=4, fsdp_wrap="layer")
    assert layer.total < ddp.total < fsdp.total  # unwrapped FSDP loses to DDP at 8B: its whole-model gradient
    main(["--preset", "llada_8b_instruct", "--strategy", "all", "--devices", "8"])
    out = capsys.readouterr().out
    assert "8.02 B parameters" in out and "671.1 M" in out
    assert all(f"\n{s} " in out for s in ("cpu", "gpu", "ddp", "fsdp"))
    with pytest.raises(SystemExit, match="unknown model preset"):
        main(["--preset", "llama_70b"])


def test_distill_dry_run_estimates_the_configured_run_without_weights(tmp_path):
    """stage=distill stage.dry_run=true: the preset's shape for a Hub id that is not downloaded, the run's own
    strategy / devices / per-device batch / lengths, and nothing but metrics.json written."""
    import json

    from conftest import compose_at

    from d3llm_pipeline.stages import call_stage

    out = tmp_path / "job"
    cfg = compose_at(tmp_path, "stage=distill", "model=llada_8b_instruct", "distill=llada", "trainer=fsdp",
                     "task=dparallel_prompts", "stage.dry_run=true", "stage.batch_size=64", f"+output_dir={out}")
    summary = call_stage(cfg)
    big = shape_of(meta_model_of("llada_8b_instruct"), 256, TARGETS)
    want = estimate(big, 256, "fsdp", devices=8, batch=64 // 8, prompt=256, gen=256, checkpointing=True)
    assert summary["per_device_bytes"] == want.total and summary["parameters"] == big.params
    assert summary["inputs"]["fsdp_wrap"] == "layer" and summary["inputs"]["batch_per_device"] == 8
    assert json.loads((out / "metrics.json").read_text())["per_device_gib"] == want.gib()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]  # no artifacts, no lock, no checkpoints
    ddp = call_stage(compose_at(tmp_path, "stage=distill", "model=llada_8b_instruct", "distill=llada", "trainer=ddp",
                                "task=dparallel_prompts", "stage.dry_run=true", f"+output_dir={out}"))
    # without stage.batch_size: the LLaDA recipe's global batch of 64 (distill.optim.batch_size), 8 per device
    assert ddp["per_device_bytes"] == estimate(big, 256, "ddp", devices=8, batch=8, checkpointing=True).total


def test_distill_dry_run_reads_a_local_teacher_config(tmp_path):
    from conftest import OFFICIAL, compose_at

    from d3llm_pipeline.errors import ConfigError
    from d3llm_pipeline.models.families import load_model
    from d3llm_pipeline.stages import call_stage

    path = OFFICIAL / "dream_tiny"
    summary = call_stage(compose_at(tmp_path, "stage=distill", "model=student", "model.family=dream",
                                    f"model.path={path}", "trainer=gpu", "stage.dry_run=true",
                                    f"+output_dir={tmp_path / 'job'}"))
    lm, _ = load_model(path, "dream")
    assert summary["parameters"] == sum(p.numel() for p in lm.model.parameters())  # its config.json's shape
    assert summary["inputs"]["strategy"] == "gpu" and summary["inputs"]["devices"] == 1
    with pytest.raises(ConfigError, match="model.name=tiny-teacher is not a preset"):
        call_stage(compose_at(tmp_path, "stage=distill", "model.path=someone/tiny", "stage.dry_run=true",
                              f"+output_dir={tmp_path / 'job2'}"))
    # a mistyped local path is an error, not the preset's published shape
    for path, where in ((tmp_path / "lada-8b", "does not exist"), (tmp_path, "holds no config.json")):
        with pytest.raises(ConfigError, match=f"stage.teacher_path={path} \\(model.path\\) {where}"):
            call_stage(compose_at(tmp_path, "stage=distill", "model=llada_8b_instruct", f"model.path={path}",
                                  "distill=llada", "task=dparallel_prompts", "stage.dry_run=true",
                                  f"+output_dir={tmp_path / 'job3'}"))


@pytest.mark.parametrize("preset", ["llada_8b_instruct", "dream_7b_instruct"])
def test_random_models_have_real_rope_tables(preset):
    """random_model (the benchmarks' 8B-shaped models) builds its module with to_empty, which leaves buffers as
    uninitialised memory: the RoPE tables must be recomputed (garbage there made logits NaN on CI's machine)."""
    import torch

    from d3llm_pipeline.models.families.shapes import random_model

    small = {"layers": 2, "hidden": 64, "vocab": 512}
    lm = random_model(preset, dtype="float32", **small)
    rotary = {n: b for n, b in lm.model.named_buffers() if "rotary" in n}
    assert rotary, "no RoPE buffers found"
    for name, table in rotary.items():
        owner, _, buffer = name.rpartition(".")
        computed = type(lm.model.get_submodule(owner))(config=lm.model.config)  # its tables, from the config
        torch.testing.assert_close(table, dict(computed.named_buffers())[buffer])
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(lm.logits(ids)).all()
