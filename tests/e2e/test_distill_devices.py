"""Distillation across devices (issue 12, item 4): a run resumes on another number of devices, Lightning's
`strategy: ddp` (which re-launches the command once per extra device) trains with only rank 0 touching artifacts,
and every rank draws, for its rows, the noise one process would draw for them over the whole global batch.

CPU stand-ins for GPUs: gloo processes (trainer.accelerator=cpu). stage.batch_size is the global batch, so the
schedule (steps, learning rate, curricula, rows per step) does not depend on the device count.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import compose_at, run_cli
from test_distill_rows import tiny_teacher
from test_distill_stage import crash_distillation, distill_overrides, losses_by_step

from d3llm_pipeline.config.schema import DistillConfig, LoraConfig
from d3llm_pipeline.models.lora import make_student
from d3llm_pipeline.models.tiny import load_tiny_teacher
from d3llm_pipeline.objectives.distill_losses import DistillLossConfig, distill_loss_rows, term_counts
from d3llm_pipeline.objectives.distill_masking import random_masks, sample_windows
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.training.distill_module import DistillModule


@pytest.fixture(scope="module")
def workspace(distill_workspace):
    return distill_workspace


@pytest.mark.slow  # two spawned gloo processes: ~23 s on 2 idle cores
def test_resume_on_two_devices_after_a_crash_on_one(workspace, monkeypatch):
    crash_distillation(monkeypatch, workspace, "moved")
    with pytest.raises(Exception, match="stage.lr: 0.001 -> 0.5"):  # any other setting still blocks the resume
        call_stage(compose_at(workspace, *distill_overrides(workspace, "moved", "trainer.devices=2", "stage.lr=0.5")))
    overrides = distill_overrides(workspace, "moved", "+trainer.strategy=ddp_spawn", "trainer.devices=2")
    overrides[-3] = f"+output_dir={workspace / 'run_moved2'}"
    summary = call_stage(compose_at(workspace, *overrides))
    assert summary["resumed"] is True and summary["steps"] == 2 * (48 // 8)  # the one-device schedule
    assert min(losses_by_step(workspace / "run_moved2")) == 4  # went on from the step-4 checkpoint
    recorded = json.loads((workspace / "moved" / "merged" / "artifact.json").read_text())["identity"]
    assert recorded["trainer.devices"] == 2  # the finished student records how it was finished
    teacher, _ = load_tiny_teacher(workspace / "outputs" / "artifacts" / "teacher")
    merged, _ = load_tiny_teacher(workspace / "moved" / "merged")
    assert any(not torch.equal(a, b) for a, b in zip(teacher.model.parameters(), merged.model.parameters(),
                                                     strict=True))


@pytest.mark.slow  # the command re-launched once: ~21 s on 2 idle cores
def test_ddp_relaunch_on_two_cpu_processes_writes_once(workspace):
    out = workspace / "ddp_cli"
    proc = run_cli(workspace, *distill_overrides(workspace, "ddp_cli")[:-1], "trainer=ddp", "trainer.accelerator=cpu",
                   "trainer.devices=2", "trainer.precision=32-true", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "merged" / "training_summary.json").read_text())
    assert summary["steps"] == 2 * (48 // 8)
    assert json.loads((out / "merged" / "artifact.json").read_text())["identity"]["trainer.devices"] == 2


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("world", [2, 4])
def test_window_and_random_mask_draws_of_row_shards_are_the_global_draws(world):
    lengths = torch.randint(1, 41, (8,), generator=_gen(0))
    start, end = sample_windows(lengths, 8, 40, _gen())
    primary, complement = random_masks(start, end, 40, 0.4, _gen())
    per = 8 // world
    shards = [(r * per, slice(r * per, (r + 1) * per)) for r in range(world)]
    windows = [sample_windows(lengths[rows], 8, 40, _gen(), row_offset=off, total_rows=8) for off, rows in shards]
    assert torch.equal(torch.cat([w[0] for w in windows]), start)
    assert torch.equal(torch.cat([w[1] for w in windows]), end)
    masks = [random_masks(start[rows], end[rows], 40, 0.4, _gen(), row_offset=off, total_rows=8)
             for off, rows in shards]
    assert torch.equal(torch.cat([m[0] for m in masks]), primary)
    assert torch.equal(torch.cat([m[1] for m in masks]), complement)
    # another shard of rows draws other windows: the equality above is not a constant draw
    assert not torch.equal(sample_windows(lengths[:per], 8, 40, _gen(), row_offset=per, total_rows=8)[0], start[:per])
    with pytest.raises(ValueError, match=r"rows \[6, 10\) are not inside a batch of 8"):
        sample_windows(lengths[:4], 8, 40, _gen(), row_offset=6, total_rows=8)


@pytest.mark.parametrize("masking", ["trajectory", "random"])
def test_each_rank_draws_what_one_process_draws_for_its_rows(tmp_path, tokenizer, masking):
    """DistillModule.noisy_masks on rank r of W == rows [rB, (r+1)B) of the one-process masks of the global batch:
    same ratio, windows and masks, also on the random fallback of rows with never-revealed positions."""
    student, _ = make_student(tiny_teacher(tmp_path, tokenizer), LoraConfig(r=4, alpha=8))
    module = DistillModule(student, replace(DistillConfig(), masking=masking), lr=1e-3, weight_decay=0.0,
                           warmup_steps=0, max_steps=10, min_lr_ratio=1.0, seed=3, val_every=100)
    module.mask_ratio_progress, module.window = 0.3, 4
    g = _gen(1)
    targets = torch.randint(3, len(tokenizer), (8, 16), generator=g)
    targets[:, 12:] = student.eos_token_id
    targets[1, 6:] = student.eos_token_id  # lengths differ: the windows differ by row
    steps = torch.stack([torch.randperm(16, generator=g) for _ in range(8)])
    steps[5, 3] = -1  # a never-revealed position: row 5 falls back to random masks (trajectory masking)
    batch = {"prompt_ids": torch.randint(3, len(tokenizer), (8, 6), generator=g), "targets": targets,
             "unmask_step": steps}
    primary, complement, ratio, _ = module.noisy_masks(batch, module._generator())
    for world in (2, 4):
        per = 8 // world
        parts = [module.noisy_masks({k: v[r * per:(r + 1) * per] for k, v in batch.items()}, module._generator(),
                                    r, world) for r in range(world)]
        assert all(part[2] == ratio for part in parts)  # one mask ratio per step on every rank
        assert torch.equal(torch.cat([part[0] for part in parts]), primary)
        assert torch.equal(torch.cat([part[1] for part in parts]), complement)


@pytest.mark.parametrize("recipe", [DistillLossConfig(),  # LLaDA: CE + CE' + 2 H
                                    DistillLossConfig(entropy_weight=1.0, entropy_on_complementary=True)])  # Dream
def test_rank_losses_with_global_denominators_average_to_the_global_gradient(recipe):
    """Two ranks, each dividing its sums by the global row counts / 2 (term_counts, all-reduced): the mean of
    their losses and of their gradients (what DDP averages) equals the one-process loss and gradient."""
    g = _gen(4)
    head = torch.randn(8, 11, generator=g, requires_grad=True)  # stands in for the student: rows = hidden @ head
    hidden, hidden_c = torch.randn(30, 8, generator=g), torch.randn(22, 8, generator=g)
    targets, targets_c = torch.randint(0, 11, (30,), generator=g), torch.randint(0, 11, (22,), generator=g)
    targets[:12] = (hidden[:12] @ head).argmax(-1).detach()  # argmax-correct rows: the entropy terms count
    targets_c[:9] = (hidden_c[:9] @ head).argmax(-1).detach()

    def loss(rows_slice, comp_slice, denominators=None):
        return distill_loss_rows(hidden[rows_slice] @ head, hidden_c[comp_slice] @ head, targets[rows_slice],
                                 targets_c[comp_slice], recipe, denominators)["loss"]

    full = loss(slice(None), slice(None))
    (want,) = torch.autograd.grad(full, head)
    shards = [(slice(0, 20), slice(0, 7)), (slice(20, 30), slice(7, 22))]  # unequal rows and correct counts
    counts = sum(term_counts((hidden[r] @ head).detach(), targets[r], (hidden_c[c] @ head).detach(), targets_c[c])
                 for r, c in shards)
    correct = [int(((h @ head).argmax(-1) == t).sum()) for h, t in ((hidden, targets), (hidden_c, targets_c))]
    assert counts.tolist() == [30.0, 22.0, *correct] and correct[0] >= 12 and correct[1] >= 9
    losses = [loss(r, c, counts / 2) for r, c in shards]
    grads = [torch.autograd.grad(value, head)[0] for value in losses]
    torch.testing.assert_close(sum(losses) / 2, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((grads[0] + grads[1]) / 2, want, rtol=1e-5, atol=1e-6)
    # the per-rank means (what each rank computed before) do not: the shards are unequal
    assert not torch.allclose((loss(*shards[0]) + loss(*shards[1])) / 2, full, atol=1e-4)


@pytest.mark.slow  # one gloo run of 2 processes and one of 1: ~35 s on 2 idle cores
def test_two_devices_train_the_student_one_device_trains(workspace):
    """Same global batch, noise and loss on 1 or 2 devices: the trained LoRA agrees to float rounding."""
    from safetensors.torch import load_file

    one = distill_overrides(workspace, "one_dev", "trainer.devices=1", "logger=none")
    two = distill_overrides(workspace, "two_dev", "+trainer.strategy=ddp_spawn", "trainer.devices=2", "logger=none")
    for overrides in (one, two):
        call_stage(compose_at(workspace, *overrides))
    a, b = (load_file(str(workspace / d / "adapter" / "adapter_model.safetensors")) for d in ("one_dev", "two_dev"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
