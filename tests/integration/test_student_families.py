"""LoRA students of the real families: trained, saved in the official format, reloaded as the same family.

On the official-format fixtures (LLaDA, Dream): make_student -> a few AdamW steps on the DistillModule's loss over
random trajectories -> save_student -> families.load_model(merged) gives the in-memory student's logits (fp32),
only LoRA matrices were trainable, the base weights did not move, and merged/ has the official names and the
teacher's config.json. Also: model.dtype=bfloat16 students and gradient checkpointing (same gradients).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import OFFICIAL
from safetensors.torch import load_file

from d3llm_pipeline.config.schema import DistillConfig, LoraConfig
from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.families import family_of, load_model
from d3llm_pipeline.models.lora import load_student_adapter, make_student, save_student
from d3llm_pipeline.training.distill_module import DistillModule

FAMS = ["llada", "dream"]
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)  # schema-default targets -> the family's own preset names


def random_batch(vocab: int, mask_id: int, eos: int, batch: int = 2, prompt: int = 6, gen: int = 10) -> dict:
    """Random prompts / targets and a random reveal order (a valid trajectory: every step 0..G-1 once)."""
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 1000, (batch, gen), generator=g)
    targets[:, -2:] = eos  # a response length the window sampler can see
    steps = torch.stack([torch.randperm(gen, generator=g) for _ in range(batch)])
    return {"prompt_ids": torch.randint(0, 1000, (batch, prompt), generator=g), "targets": targets,
            "unmask_step": steps}


def train_a_few_steps(student, steps: int = 3) -> list[float]:
    distill = DistillConfig()
    module = DistillModule(student, distill, lr=1e-2, weight_decay=0.0, warmup_steps=0, max_steps=steps,
                           min_lr_ratio=1.0, seed=0, val_every=100)
    module.mask_ratio_progress = 0.5
    module.window = 8
    batch = random_batch(0, student.mask_token_id, student.eos_token_id)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        terms, _, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    return losses


@pytest.mark.parametrize("fam", FAMS)
def test_real_family_student_trains_saves_and_reloads_as_the_same_family(tmp_path, fam):
    teacher_dir = OFFICIAL / f"{fam}_tiny"
    student, tokenizer = make_student(teacher_dir, LORA)
    base_before = {n: p.detach().clone() for n, p in student.model.get_base_model().named_parameters()
                   if "lora_" not in n}
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    losses = train_a_few_steps(student)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] != losses[0]
    for n, p in student.model.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n  # base weights frozen

    adapter_dir, merged_dir = save_student(student, tokenizer, tmp_path / "student")
    assert family_of(merged_dir).name == fam  # official model_type: found by the loaders as this family
    assert (merged_dir / "config.json").read_bytes() == (teacher_dir / "config.json").read_bytes()
    saved = load_file(str(merged_dir / "model.safetensors"))
    assert sorted(saved) == sorted(load_file(str(teacher_dir / "model.safetensors")))  # official names
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the training dtype: no LoRA delta rounded off

    student.eval()
    ids = torch.randint(0, 1000, (2, 14), generator=torch.Generator().manual_seed(3))
    ids[:, 8:] = student.mask_token_id
    with torch.no_grad():
        expected = student.logits(ids)  # the unmerged in-memory student: x W + (x A) B s
        in_memory = HFDiffusionAdapter(copy.deepcopy(student.model).merge_and_unload(), student.mask_token_id,
                                       student.eos_token_id, student.pad_token_id, student.shift_logits)
        reloaded, _ = load_model(merged_dir, fam, dtype="float32")
        got = reloaded.logits(ids)
        assert torch.equal(got, in_memory.logits(ids))  # the saved merge is PEFT's merge, bit for bit
        # merged x (W + B A s) vs unmerged: fp32 rounding only (logits here reach ~50: the fixtures' scaled head)
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 2e-6 * scale
        again = load_student_adapter(teacher_dir, adapter_dir)  # the unmerged adapter on the teacher
        assert (again.logits(ids) - expected).abs().max().item() < 1e-5
        teacher, _ = load_model(teacher_dir, fam, dtype="float32")
        assert (teacher.logits(ids) - expected).abs().max().item() > 1e-3  # training changed the model
    summary = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert summary["r"] == 4


@pytest.mark.parametrize("fam", FAMS)
def test_bf16_student_and_gradient_checkpointing(fam):
    teacher_dir = OFFICIAL / f"{fam}_tiny"
    student, _ = make_student(teacher_dir, LORA, dtype="bfloat16")
    base = student.model.get_base_model()
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in student.parameters() if p.requires_grad)  # PEFT keeps LoRA fp32
    losses = train_a_few_steps(student, steps=2)  # bf16 base + fp32 LoRA trains (finite, moving loss)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] != losses[0]

    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        student, _ = make_student(teacher_dir, LORA, gradient_checkpointing=checkpointing)
        assert student.model.get_base_model().is_activation_checkpointing == checkpointing
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
        student.train()
        train_a_few_steps(student, steps=1)
        grads[checkpointing] = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], atol=1e-6, rtol=1e-5)
