"""The distillation loss asks the student only for the logits of the masked positions (adapter `keep`).

Against the previous full-logit path (full (2B, L, V) logits -> distill_loss) on the same batch and masks: the
same loss terms and the same LoRA gradients to 1e-6, on the tiny teacher and on the LLaDA / Dream fixtures
(Dream's logits are shifted: the kept rows must be realigned the same way), for the LLaDA, Dream and Dream-Coder
loss recipes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import OFFICIAL
from test_student_families import random_batch

from d3llm_pipeline.config.schema import DistillConfig, DistillLossSection, LoraConfig
from d3llm_pipeline.models.lora import make_student
from d3llm_pipeline.objectives.distill_losses import distill_loss, distill_loss_rows
from d3llm_pipeline.objectives.distill_masking import apply_masks
from d3llm_pipeline.training.distill_module import DistillModule

RECIPES = {  # (complementary, entropy_weight, entropy_on_complementary)
    "llada": DistillLossSection(),
    "dream": replace(DistillLossSection(), entropy_weight=1.0, entropy_on_complementary=True),
    "coder": replace(DistillLossSection(), complementary=False, entropy_weight=1.0),
}


def full_logit_loss(module: DistillModule, batch: dict) -> dict[str, torch.Tensor]:
    """The previous compute_loss: full logits of both passes, then distill_loss (same masks: same generator)."""
    prompt, targets = batch["prompt_ids"], batch["targets"]
    primary, complement, _, _ = module.noisy_masks(batch, module._generator())
    mask_id = module.student.mask_token_id
    inputs = apply_masks(prompt, targets, primary, mask_id)
    no_prompt = torch.zeros_like(prompt, dtype=torch.bool)
    primary_full, complement_full = torch.cat([no_prompt, primary], 1), torch.cat([no_prompt, complement], 1)
    full_targets = torch.cat([prompt, targets], dim=1)
    if module.loss_cfg.complementary:
        both = torch.cat([inputs, apply_masks(prompt, targets, complement, mask_id)])
        logits, logits_comp = module.student.logits(both).chunk(2)  # (B, L, V) each
    else:
        logits, logits_comp = module.student.logits(inputs), None
    return distill_loss(logits, logits_comp, full_targets, primary_full, complement_full, module.loss_cfg)


def loss_and_grads(module: DistillModule, batch: dict, path) -> tuple[dict, dict]:
    module.student.zero_grad()
    terms = path(batch)
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.student.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in terms.items()}, grads


def make_some_predictions_correct(module: DistillModule, batch: dict) -> None:
    """Set the targets at half the primary-masked positions to the student's argmax there, so that the entropy
    term (argmax-correct rows only) is not 0 on random weights. The primary input at those positions is MASK,
    so its logits do not change; the same generator draws the same masks; EOS stays where it was."""
    prompt, targets = batch["prompt_ids"], batch["targets"]
    primary, _, _, _ = module.noisy_masks(batch, module._generator())
    inputs = apply_masks(prompt, targets, primary, module.student.mask_token_id)
    with torch.no_grad():
        guess = module.student.logits(inputs)[:, prompt.shape[1]:].argmax(-1)  # (B, G)
    special = (guess == module.student.eos_token_id) | (targets == module.student.eos_token_id)
    pick = primary & ~special & (torch.arange(targets.shape[1]) % 2 == 0)
    targets[pick] = guess[pick]


def tiny_teacher(tmp_path, tokenizer):
    from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher

    save_tiny_teacher(build_tiny_teacher(tokenizer, max_positions=32, n_embd=32, n_layer=2, n_head=2, seed=0),
                      tokenizer, tmp_path / "teacher")
    return tmp_path / "teacher"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("model", ["tiny", "llada", "dream"])
def test_rows_path_equals_the_full_logit_path(tmp_path, tokenizer, model, recipe):
    path = tiny_teacher(tmp_path, tokenizer) if model == "tiny" else OFFICIAL / f"{model}_tiny"
    torch.manual_seed(0)
    student, _ = make_student(path, LoraConfig(r=4, alpha=8))
    for name, param in student.named_parameters():
        if "lora_B" in name:  # B starts at zero; a non-zero B gives A gradients too
            param.data.normal_(0, 0.1)
    distill = replace(DistillConfig(), loss=RECIPES[recipe])
    module = DistillModule(student, distill, lr=1e-3, weight_decay=0.0, warmup_steps=0, max_steps=1,
                           min_lr_ratio=1.0, seed=0, val_every=100)
    module.mask_ratio_progress, module.window = 0.6, 8
    vocab = 20 if model == "tiny" else 1000
    batch = random_batch(vocab, student.mask_token_id, student.eos_token_id, batch=3)
    if model == "tiny":  # the tiny vocabulary: ids 3..19, EOS from its tokenizer
        g = torch.Generator().manual_seed(2)
        batch["prompt_ids"] = torch.randint(3, len(tokenizer), batch["prompt_ids"].shape, generator=g)
        batch["targets"] = torch.randint(3, len(tokenizer), batch["targets"].shape, generator=g)
        batch["targets"][:, -2:] = student.eos_token_id
    make_some_predictions_correct(module, batch)
    new_terms, new_grads = loss_and_grads(module, batch, lambda b: module.compute_loss(b)[0])
    old_terms, old_grads = loss_and_grads(module, batch, lambda b: full_logit_loss(module, b))
    assert float(new_terms["entropy"]) > 0  # the entropy term is exercised, not a 0 on both sides
    assert float(new_terms["ce"]) > 0 and (not distill.loss.complementary or float(new_terms["ce_comp"]) > 0)
    for key in old_terms:
        assert abs(float(new_terms[key]) - float(old_terms[key])) <= 1e-6, key
    assert new_grads.keys() == old_grads.keys() and new_grads
    for name in old_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], atol=1e-6, rtol=1e-5)


def test_rows_loss_is_the_full_loss_on_the_masked_rows():
    """The pure core: distill_loss on (B, L, V) logits == distill_loss_rows on the masked rows, bit for bit."""
    g = torch.Generator().manual_seed(0)
    logits, logits_c = torch.randn(2, 3, 7, 11, generator=g).unbind(0)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    primary = torch.rand(3, 7, generator=g) < 0.5
    complement = ~primary
    logits[primary] += 3 * torch.nn.functional.one_hot(targets[primary], 11)  # some argmax-correct rows
    cfg = replace(DistillLossSection(), entropy_on_complementary=True)
    from d3llm_pipeline.objectives.distill_losses import DistillLossConfig

    loss_cfg = DistillLossConfig(**vars(cfg))
    full = distill_loss(logits, logits_c, targets, primary, complement, loss_cfg)
    rows = distill_loss_rows(logits[primary], logits_c[complement], targets[primary], targets[complement], loss_cfg)
    assert all(torch.equal(full[k], rows[k]) for k in full) and float(full["entropy"]) > 0
