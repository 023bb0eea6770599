"""stage=export: a natively loaded LLaDA / Dream model written back in the official on-disk format.

On the official-format fixtures (tests/fixtures/official, bf16): load natively in fp32 or bf16, export, and the
safetensors are byte-equal to the fixture's (same names, same dtypes, torch.equal on every tensor) and config.json
/ generation_config.json are the same bytes. A LoRA-merged export differs only in the LoRA-targeted tensors. A
sharded source is written with the same shards and index. The tiny family exports as an HF checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL, compose_at
from safetensors.torch import load_file, save_file

from d3llm_pipeline.models.families import get_family, load_model
from d3llm_pipeline.models.families.export import export_model, export_official

FAMS = ["llada", "dream"]


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def assert_byte_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fam", FAMS)
def test_export_reproduces_the_official_checkpoint_bit_for_bit(tmp_path, fam, dtype):
    source = OFFICIAL / f"{fam}_tiny"
    lm, _ = load_model(source, fam, dtype=dtype)
    out = export_official(lm, get_family(fam), source, tmp_path / "out")
    assert_byte_equal(all_tensors(source), all_tensors(out))
    assert {t.dtype for t in all_tensors(out).values()} == {torch.bfloat16}  # the released dtype, not fp32
    for name in ("config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert not (tmp_path / "out.export.tmp").exists()
    again, _ = load_model(out, fam, dtype="float32")  # and it loads as the same family, same logits
    ids = torch.randint(0, 1000, (1, 12))
    torch.testing.assert_close(again.logits(ids), load_model(source, fam, dtype="float32")[0].logits(ids),
                               atol=0, rtol=0)


@pytest.mark.parametrize("fam", FAMS)
def test_lora_merged_export_differs_only_in_the_adapted_tensors(tmp_path, fam):
    from peft import LoraConfig, get_peft_model

    from d3llm_pipeline.models.lora import MergedState

    source = OFFICIAL / f"{fam}_tiny"
    lm, _ = load_model(source, fam, dtype="float32")
    peft_model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the delta large enough to survive the bf16 cast
            param.data.normal_(0, 1.0)
    out = export_official(MergedState(peft_model), get_family(fam), source, tmp_path / "out")
    base, merged = all_tensors(source), all_tensors(out)
    assert sorted(base) == sorted(merged)
    official = {"llada": ("q_proj", "ff_out"), "dream": ("q_proj", "down_proj")}[fam]
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    targeted = {n for n in base if n.endswith(tuple(f".{m}.weight" for m in official)) and ".blocks." in n
                or n.endswith(tuple(f"{m}.weight" for m in official)) and ".layers." in n}
    config = json.loads((source / "config.json").read_text())
    layers = config.get("n_layers", config.get("num_hidden_layers"))  # the fixture's own depth (LLaDA / Dream names)
    assert changed == targeted and len(targeted) == 2 * layers  # 2 modules a layer; lm_head (LLaDA ff_out) untouched
    # the merged tensors are PEFT's own merge, cast to bf16
    reference = peft_model.merge_and_unload().state_dict()
    family = get_family(fam)
    for name in targeted:
        assert torch.equal(merged[name], reference[family.rename(name)].to(torch.bfloat16)), name


def test_sharded_source_is_written_with_the_same_shards_and_index(tmp_path):
    source = tmp_path / "sharded"
    shutil.copytree(OFFICIAL / "llada_tiny", source, ignore=shutil.ignore_patterns("reference", "*.safetensors"))
    tensors = load_file(str(OFFICIAL / "llada_tiny" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(source / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    lm, _ = load_model(source, "llada", dtype="float32")
    out = export_official(lm, get_family("llada"), source, tmp_path / "out")
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(shards)
    for file, part in shards.items():
        assert sorted(load_file(str(out / file))) == sorted(part)
    assert json.loads((out / "model.safetensors.index.json").read_text()) == index
    assert_byte_equal(tensors, all_tensors(out))


@pytest.mark.parametrize("fam", FAMS)
def test_stage_export_with_and_without_an_adapter(tmp_path, fam):
    from peft import LoraConfig, get_peft_model

    from d3llm_pipeline.config.validate import validate_config
    from d3llm_pipeline.stages import call_stage

    source = OFFICIAL / f"{fam}_tiny"
    preset = {"llada": "llada_8b_instruct", "dream": "dream_7b_instruct"}[fam]
    common = [f"model={preset}", f"model.path={source}", "model.dtype=float32", f"+output_dir={tmp_path / 'run'}"]
    cfg = compose_at(tmp_path, "stage=export", *common, f"stage.out_dir={tmp_path / 'plain'}")
    validate_config(cfg)
    summary = call_stage(cfg)
    assert summary["family"] == fam and Path(summary["out_dir"]) == tmp_path / "plain"
    assert_byte_equal(all_tensors(source), all_tensors(tmp_path / "plain"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stage"] == "export"

    lm, _ = load_model(source, fam, dtype="float32")  # a saved adapter (as stage=distill writes adapter/)
    peft_model = get_peft_model(lm.model, LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = compose_at(tmp_path, "stage=export", *common, f"stage.adapter={tmp_path / 'adapter'}",
                     f"stage.out_dir={tmp_path / 'merged'}")
    validate_config(cfg)
    call_stage(cfg)
    base, merged = all_tensors(source), all_tensors(tmp_path / "merged")
    assert {n for n in base if not torch.equal(base[n], merged[n])} == {n for n in base if n.endswith("v_proj.weight")}


def test_tiny_family_exports_as_an_hf_checkpoint(tmp_path, tokenizer):
    from d3llm_pipeline.models.tiny import build_tiny_teacher, load_tiny_teacher

    lm = build_tiny_teacher(tokenizer, max_positions=32, n_embd=16, n_layer=1, n_head=2, seed=0)
    out = export_model(lm, get_family("tiny"), None, tmp_path / "tiny", tokenizer)
    again, tok = load_tiny_teacher(out)
    ids = torch.randint(3, len(tokenizer), (2, 10))
    torch.testing.assert_close(again.logits(ids), lm.eval().logits(ids), atol=0, rtol=0)
    assert tok.mask_token_id == tokenizer.mask_token_id


def test_a_source_of_another_family_or_shape_is_one_line(tmp_path):
    from d3llm_pipeline.errors import PipelineError

    lm, _ = load_model(OFFICIAL / "llada_tiny", "llada", dtype="float32")
    with pytest.raises(PipelineError, match="model_type 'Dream'"):
        export_official(lm, get_family("llada"), OFFICIAL / "dream_tiny", tmp_path / "out")
    wider = tmp_path / "wider"  # same family, another width: the shapes do not match
    shutil.copytree(OFFICIAL / "llada_tiny", wider, ignore=shutil.ignore_patterns("reference"))
    tensors = load_file(str(wider / "model.safetensors"))
    tensors["model.transformer.wte.weight"] = torch.zeros(126464, 64, dtype=torch.bfloat16)
    save_file(tensors, str(wider / "model.safetensors"))
    with pytest.raises(PipelineError, match=r"model.transformer.wte.weight has shape \[126464, 64\]"):
        export_official(lm, get_family("llada"), wider, tmp_path / "out")
    assert not (tmp_path / "out").exists()
