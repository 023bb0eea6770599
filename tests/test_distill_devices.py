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
