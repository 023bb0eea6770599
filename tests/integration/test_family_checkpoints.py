"""Bad official-format checkpoints, Hub ids offline, memory checks, and the family seam inside the stages.

Each bad dir is a copy of the LLaDA fixture with one thing broken; each must fail with exactly one PipelineError
line that names the file and what is wrong, before any weight is read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL

from d3llm_pipeline.config.schema import LoraConfig, ModelConfig
from d3llm_pipeline.errors import ConfigError, PipelineError
from d3llm_pipeline.models.families import checkpoint, load_model

BLOCK = "model.transformer.blocks"


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.fixture
def llada_copy(tmp_path) -> Path:
    out = tmp_path / "llada"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(OFFICIAL / "llada_tiny" / name, out / name)
        (out / name).chmod(0o644)
    return out


def edit_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- bad checkpoints
def test_missing_tensor(llada_copy):
    edit_weights(llada_copy, lambda t: t.pop(f"{BLOCK}.1.ff_out.weight"))
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    message = one_line(err)
    assert f"{llada_copy / 'model.safetensors'} (model.path) lacks the tensor(s) {BLOCK}.1.ff_out.weight" in message


def test_wrong_shape(llada_copy):
    width = json.loads((llada_copy / "config.json").read_text())["d_model"]  # the fixture's own size
    bad = torch.zeros(width, width // 2, dtype=torch.bfloat16)
    edit_weights(llada_copy, lambda t: t.update({f"{BLOCK}.0.q_proj.weight": bad}))
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    message = one_line(err)
    assert str(llada_copy / "model.safetensors") in message
    assert f"the tensor {BLOCK}.0.q_proj.weight has shape [{width}, {width // 2}], but" in message
    assert f"implies [{width}, {width}]" in message


def test_unexpected_tensor(llada_copy):
    edit_weights(llada_copy, lambda t: t.update({f"{BLOCK}.0.extra.weight": torch.zeros(2, dtype=torch.bfloat16)}))
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    assert f"holds the tensor {BLOCK}.0.extra.weight, which a LLaDA checkpoint does not have" in one_line(err)


def test_unknown_model_type(llada_copy):
    edit_config(llada_copy, model_type="mamba-xl")
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    message = one_line(err)
    assert f"{llada_copy / 'config.json'} (model.path) has model_type 'mamba-xl', which no model family" in message


def test_family_mismatch_names_the_file_and_both_values(llada_copy):
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "dream")
    message = one_line(err)
    assert (f"{llada_copy / 'config.json'} (model.path) has model_type 'llada', but model.family=dream loads "
            "model_type 'Dream'; set model.family=llada") in message
    with pytest.raises(PipelineError) as err:  # the tiny family's own check (stages/checks.py) says the same
        load_model(llada_copy, "tiny")
    assert "has model_type 'llada', which model.family=tiny cannot load" in one_line(err)


def test_preset_mismatch_through_the_stage_loader(llada_copy):
    from conftest import compose_at

    from d3llm_pipeline.config.schema import load_section
    from d3llm_pipeline.stages.common import load_model as stage_load_model

    cfg = compose_at(llada_copy.parent, "model=dream_7b_instruct", f"model.path={llada_copy}")
    model = load_section(cfg.model, ModelConfig, "model")
    with pytest.raises(PipelineError) as err:
        stage_load_model(model)
    assert "has model_type 'llada', but model.family=dream" in one_line(err)


def test_truncated_weights_and_unsupported_fields(llada_copy):
    data = (llada_copy / "model.safetensors").read_bytes()
    (llada_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    assert f"{llada_copy / 'model.safetensors'} (model.path) is unreadable" in one_line(err)
    (llada_copy / "model.safetensors").write_bytes(data)
    edit_config(llada_copy, alibi=True)
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    assert "LLaDA field alibi=True has no native Llama equivalent" in one_line(err)


def test_tied_embeddings_need_no_lm_head(llada_copy):
    """weight_tying=true (a LLaDA config field): the head is the embedding, and its tensor is not required."""
    edit_config(llada_copy, weight_tying=True)
    edit_weights(llada_copy, lambda t: t.pop("model.transformer.ff_out.weight"))
    model = load_model(llada_copy, "llada")[0].model
    assert model.lm_head.weight is model.model.embed_tokens.weight and not model.lm_head.weight.is_meta


def test_missing_shard_named_by_the_index(llada_copy):
    (llada_copy / "model.safetensors").unlink()
    index = {"weight_map": {f"{BLOCK}.0.q_proj.weight": "model-00001-of-00002.safetensors"}}
    (llada_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError) as err:
        load_model(llada_copy, "llada")
    assert "names shard(s) ['model-00001-of-00002.safetensors'] that are not in" in one_line(err)


def test_remote_backend_without_code_is_one_line(caplog):
    with pytest.raises(PipelineError) as err:
        load_model(OFFICIAL / "llada_tiny", "llada", backend="remote")
    assert "cannot load the checkpoint model.path=" in one_line(err) and "auto_map" in str(err.value)
    assert "KV caching (decode.kv_cache) and logits_to_keep may be unavailable" in caplog.text
    with pytest.raises(ConfigError, match="model.family=tiny loads natively"):
        load_model(OFFICIAL / "llada_tiny", "tiny", backend="remote")


# --------------------------------------------------------------------------------- memory, Hub
def test_memory_estimate_is_logged_and_too_little_fails(monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="d3llm_pipeline.models.families.checkpoint")
    lm, _ = load_model(OFFICIAL / "llada_tiny", "llada")
    n_params = sum(p.numel() for p in lm.model.parameters())
    assert f"{n_params / 1e9:.3f} B parameters" in caplog.text and "in float32" in caplog.text
    monkeypatch.setattr(checkpoint, "available_bytes", lambda device: (n_params * 4, "MemAvailable (test)"))
    with pytest.raises(PipelineError) as err:  # the weights fit, the +10% headroom does not
        load_model(OFFICIAL / "llada_tiny", "llada")
    need, free = n_params * 4 * 1.1 / 2**20, n_params * 4 / 2**20
    assert (f"llada_tiny needs about {need:.0f} MiB ({n_params / 1e9:.2f} B parameters in float32, +10%) but only "
            f"{free:.0f} MiB is MemAvailable (test); use model.dtype=bfloat16") in one_line(err)


def test_hub_id_offline_and_not_cached_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    with pytest.raises(PipelineError) as err:
        load_model("GSAI-ML/LLaDA-8B-Instruct", "llada")
    assert one_line(err).startswith("model.path=GSAI-ML/LLaDA-8B-Instruct is a Hub id that is not in the local "
                                    "cache and the Hub is offline; download it (HF_HUB_OFFLINE=0 ")
    assert err.value.args[0].endswith("or pass a local dir with model.path=<dir>")
    # a missing path that is no Hub id is reported as such, not looked up
    with pytest.raises(PipelineError, match="holds no checkpoint"):
        load_model("/nonexistent/a/b", "llada")


def test_cached_hub_id_resolves_offline(tmp_path, monkeypatch):
    """A Hub id in the local HF cache (models--owner--name/refs/main -> snapshots/<sha>/) loads offline."""
    from huggingface_hub import constants

    sha = "0" * 40
    snapshot = tmp_path / "models--fake-org--llada-tiny" / "snapshots" / sha
    shutil.copytree(OFFICIAL / "llada_tiny", snapshot, ignore=shutil.ignore_patterns("reference"))
    (tmp_path / "models--fake-org--llada-tiny" / "refs").mkdir()
    (tmp_path / "models--fake-org--llada-tiny" / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert checkpoint.resolve_model_path("fake-org/llada-tiny", "model.path") == snapshot
    lm, _ = load_model("fake-org/llada-tiny", "llada")
    assert lm.mask_token_id == 126336


# ------------------------------------------------------------------------ the seam in the stages
def test_stage_loader_checks_fit_and_loads_a_real_family():
    from d3llm_pipeline.stages.common import check_model
    from d3llm_pipeline.stages.common import load_model as stage_load_model
    from d3llm_pipeline.tasks.arith import ArithTask

    model = ModelConfig(family="dream", path=str(OFFICIAL / "dream_tiny"), attn_implementation="eager")
    check_model(model, ArithTask())  # 88 positions fit Dream's 131072
    lm, tokenizer = stage_load_model(model)
    assert lm.shift_logits and tokenizer is None and lm.model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="model.attn_implementation must be sdpa or eager"):
        ModelConfig(attn_implementation="flash")
    with pytest.raises(ConfigError, match="model.family must be one of: dream, llada, tiny"):
        ModelConfig(family="mamba")


def test_lora_targets_come_from_the_family_preset():
    """Left at the (tiny) default, distill.lora.target_modules becomes the family's native names."""
    from d3llm_pipeline.models.lora import make_student

    student, _ = make_student(OFFICIAL / "llada_tiny", LoraConfig(r=2, alpha=4))
    targets = set(student.model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert student.model.peft_config["default"].fan_in_fan_out is False
    trainable = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in student.model.named_parameters() if p.requires_grad}
    assert trainable == targets  # every projection of every layer got an adapter; nothing else trains
    explicit, _ = make_student(OFFICIAL / "llada_tiny", LoraConfig(r=2, alpha=4, target_modules=["q_proj"]))
    assert set(explicit.model.peft_config["default"].target_modules) == {"q_proj"}
    teacher, _ = load_model(OFFICIAL / "llada_tiny", "llada")
    ids = torch.arange(500, 530)[None]
    with torch.no_grad():  # LoRA starts at zero: the student's logits are the teacher's
        assert torch.allclose(student.logits(ids), teacher.logits(ids), atol=1e-5)


def test_tiny_path_keeps_gpt2_lora_and_loads_through_the_registry(tmp_path, tokenizer):
    from d3llm_pipeline.models.lora import make_student
    from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
    from d3llm_pipeline.stages.common import load_model as stage_load_model

    save_tiny_teacher(build_tiny_teacher(tokenizer, max_positions=40, n_embd=16, n_layer=1, n_head=2, seed=0),
                      tokenizer, tmp_path / "teacher")
    student, tok = make_student(tmp_path / "teacher", LoraConfig(r=2, alpha=4))
    config = student.model.peft_config["default"]
    assert set(config.target_modules) == {"c_attn", "c_proj", "c_fc"} and config.fan_in_fan_out is True
    lm, tok = stage_load_model(ModelConfig(path=str(tmp_path / "teacher"), attn_implementation="eager"))
    assert lm.mask_token_id == tok.mask_token_id and lm.model.config._attn_implementation == "eager"


def test_adapter_slices_logits_itself_when_the_model_ignores_logits_to_keep(gpt2_lm):
    """Remote-code forwards may lack logits_to_keep: full logits are computed and the kept rows selected."""
    from d3llm_pipeline.models.adapter import HFDiffusionAdapter

    class NoKeep(torch.nn.Module):  # a forward with neither logits_to_keep nor **kwargs
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    for shift in (False, True):
        lm = HFDiffusionAdapter(NoKeep(gpt2_lm.model), 1, 2, 0, shift_logits=shift)
        assert not lm._takes_keep
        ids = torch.randint(3, 20, (2, 12), generator=torch.Generator().manual_seed(0))
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[0, 3:6] = keep[1, 11] = True
        with torch.no_grad():
            assert torch.equal(lm.logits(ids, keep=keep), lm.logits(ids)[keep])


def test_decoding_stage_needs_a_tokenizer(tmp_path):
    """The fixtures ship no tokenizer: a stage that encodes the task stops with one line, not a traceback."""
    from conftest import compose_at

    from d3llm_pipeline.config.stage_schemas import STAGE_SCHEMAS
    from d3llm_pipeline.stages.common import prepare_decoding_run

    cfg = compose_at(tmp_path, "stage=eval", "model=d3llm_dream", f"model.path={OFFICIAL / 'dream_tiny'}",
                     "device=cpu")
    with pytest.raises(ConfigError, match="dream_tiny holds no tokenizer, which stage=eval needs to encode the task"):
        prepare_decoding_run(cfg, STAGE_SCHEMAS["eval"])
