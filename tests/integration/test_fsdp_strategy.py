"""trainer=fsdp's pieces: the layer wrap policy found in each family's model, the strategy object trainer_kwargs builds
from the preset, the float32 teacher FSDP needs, and the export path (the trained LoRA gathered at the end of fit
and loaded into a fresh student). Sharded runs on CPU processes: tests/e2e/test_fsdp_cpu.py.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import OFFICIAL, compose_at
from test_distill_rows import tiny_teacher
from test_student_families import random_batch

from d3llm_pipeline.config.schema import DistillConfig, LoraConfig
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.models.lora import make_student
from d3llm_pipeline.training.distill_module import DistillModule
from d3llm_pipeline.training.fit import trainer_kwargs
from d3llm_pipeline.training.strategies import (
    GatherTrainedState,
    decoder_layer_classes,
    fsdp_teacher_dtype,
    layer_units,
    load_trained_weights,
)

LAYER_CLASS = {"tiny": "GPT2Block", "llada": "LlamaDecoderLayer", "dream": "Qwen2DecoderLayer"}


def family_student(model: str, tmp_path, tokenizer):
    path = tiny_teacher(tmp_path, tokenizer) if model == "tiny" else OFFICIAL / f"{model}_tiny"
    torch.manual_seed(0)
    return make_student(path, LoraConfig(r=4, alpha=8))[0], path


def units_of(student: torch.nn.Module, policy) -> dict[torch.nn.Module, list[torch.nn.Parameter]]:
    """Each FSDP unit the policy makes (the root included) -> the parameters it owns: its own, less those of the
    units nested in it (what FSDP1 flattens into that unit's one flat parameter)."""
    wrapped = [student, *(m for m in policy._run_policy(student, set(), {}) if m is not student)]
    nested = {id(p) for unit in wrapped[1:] for p in unit.parameters()}
    units = {student: [p for p in student.parameters() if id(p) not in nested]}
    for unit in wrapped[1:]:
        inner = {id(p) for other in wrapped[1:] if other is not unit and any(o is other for o in unit.modules())
                 for p in other.parameters()}
        units[unit] = [p for p in unit.parameters() if id(p) not in inner]
    return units


@pytest.mark.parametrize("model", ["tiny", "llada", "dream"])
def test_the_wrap_policy_is_each_family_decoder_layer_and_its_lora_matrices(tmp_path, tokenizer, model):
    student, _ = family_student(model, tmp_path, tokenizer)
    classes = decoder_layer_classes(student)  # through the adapter and PEFT's wrappers
    assert {c.__name__ for c in classes} == {LAYER_CLASS[model]}
    units = units_of(student, layer_units(student))
    layers = [unit for unit in units if type(unit) in classes]
    assert len(layers) == student.model.get_base_model().config.num_hidden_layers
    # no unit mixes frozen and trainable parameters: FSDP1 would give such a unit a gradient its whole size
    assert all(len({p.requires_grad for p in owned}) == 1 for owned in units.values() if owned)
    lora = [p for p in student.parameters() if p.requires_grad]
    assert sum(len(owned) for owned in units.values() if owned and owned[0].requires_grad) == len(lora)
    assert all(not p.requires_grad and p.numel() for layer in layers for p in units[layer])  # the frozen weights
    assert all(len(units[unit]) == 1 for unit in units if unit is not student and type(unit) not in classes)


def test_the_fsdp_preset_builds_a_layer_wrapped_strategy(tmp_path, tokenizer):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    student, _ = family_student("tiny", tmp_path, tokenizer)
    cfg = compose_at(tmp_path, "stage=distill", "trainer=fsdp")
    kwargs = trainer_kwargs(cfg, model=student)
    assert "fsdp_wrap" not in kwargs  # ours, never passed to lightning.Trainer
    strategy = kwargs["strategy"]
    assert type(strategy) is FSDPStrategy and strategy.kwargs["use_orig_params"] is True  # frozen + LoRA per unit
    policy = strategy.kwargs["auto_wrap_policy"]
    layers = sum(type(m).__name__ == "GPT2Block" for m in units_of(student, policy))
    assert isinstance(policy, CustomPolicy) and layers == student.model.get_base_model().config.num_hidden_layers
    assert trainer_kwargs(compose_at(tmp_path, "stage=distill", "trainer=fsdp", "trainer.fsdp_wrap=none"),
                          model=student)["strategy"] == "fsdp"  # Lightning's registered defaults, as typed
    assert trainer_kwargs(compose_at(tmp_path, "stage=distill", "trainer=ddp"), model=student)["strategy"] == "ddp_spawn"
    with pytest.raises(ConfigError, match="trainer.fsdp_wrap=none"):
        decoder_layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_unwrapped_fsdp_loads_the_teacher_in_float32():
    assert fsdp_teacher_dtype("bfloat16", "fsdp", "none") == "float32"  # one unit: frozen + fp32 LoRA
    assert fsdp_teacher_dtype("bfloat16", "fsdp", "layer") == "bfloat16"  # the LoRA matrices in units of their own
    assert fsdp_teacher_dtype("bfloat16", "ddp_spawn", "none") == "bfloat16"
    assert fsdp_teacher_dtype("float32", "fsdp_cpu_offload", "none") == "float32"


class OneBatch(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


def test_the_gathered_lora_exports_what_was_trained(tmp_path, tokenizer):
    """GatherTrainedState (the end-of-fit gather the FSDP export uses) on a real 3-step CPU fit: a fresh student
    loaded from it has exactly the trained LoRA tensors, and so the trained student's logits."""
    student, path = family_student("tiny", tmp_path, tokenizer)
    module = DistillModule(student, DistillConfig(), lr=5e-2, weight_decay=0.0, warmup_steps=0, max_steps=3,
                           min_lr_ratio=1.0, seed=0, val_every=100)
    module.mask_ratio_progress, module.window = 0.5, 8
    batch = random_batch(0, student.mask_token_id, student.eos_token_id)
    batch = {k: v.remainder(len(tokenizer)) if k != "unmask_step" else v for k, v in batch.items()}
    batch["targets"][:, -2:] = student.eos_token_id
    gather = GatherTrainedState()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[gather])
    trainer.fit(module, torch.utils.data.DataLoader(OneBatch(batch, 3), batch_size=None))
    trained = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert set(gather.state) == {"student." + n for n in trained}  # only the LoRA tensors are kept
    assert all(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)  # trained: B starts at zero
    fresh, _ = make_student(path, LoraConfig(r=4, alpha=8))
    assert all(not p.any() for n, p in fresh.named_parameters() if "lora_B" in n)
    assert load_trained_weights(fresh, gather.state) == len(trained)
    for name, param in fresh.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name]), name
    ids = torch.randint(3, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    student.eval()
    with torch.no_grad():
        assert torch.equal(fresh.eval().logits(ids), student.logits(ids))
    with pytest.raises(RuntimeError, match="lacks 1 trained tensors"):
        load_trained_weights(fresh, dict(list(gather.state.items())[1:]))
