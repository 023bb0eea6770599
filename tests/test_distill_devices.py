"""Distillation across devices (issue 12, item 4): a run resumes on another number of devices, and Lightning's
`strategy: ddp` (which re-launches the command once per extra device) trains with only rank 0 touching artifacts.

CPU stand-ins for GPUs: gloo processes (trainer.accelerator=cpu). stage.batch_size is the global batch, so the
schedule (steps, learning rate, curricula, rows per step) does not depend on the device count.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_at, run_cli
from test_distill_stage import crash_distillation, distill_overrides, losses_by_step

from d3llm_pipeline.models.tiny import load_tiny_teacher
from d3llm_pipeline.stages import call_stage


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
