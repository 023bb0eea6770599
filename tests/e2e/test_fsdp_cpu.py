"""trainer=fsdp on CPU processes over gloo (training/cpu_fsdp.py): the sharded distillation path run for real
without GPUs. Two FSDP processes, each holding half of every decoder-layer unit and of the AdamW state, train the
student one unsharded process trains; the export carries the LoRA gathered over the ranks; a run resumes across
plain and FSDP checkpoints, on another number of processes.

    pytest tests/e2e/test_fsdp_cpu.py            # ~25 s on 2 idle cores (one 2-process run)
    pytest tests/e2e/test_fsdp_cpu.py -m slow    # FSDP crash -> one process, checkpointing, no wrap, bf16, LLaDA and
                                             # Dream fixtures (~3 min)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL, ROOT, compose_at, run_cli
from test_distill_stage import crash_distillation, distill_overrides, losses_by_step

from d3llm_pipeline.objectives.schedules import lr_multiplier
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.training.distill_module import DistillModule, renumber_trainable_only

# FSDP over 2 CPU processes; a small gradient clip so that clipping over the shards is exercised every step
CPU_FSDP = ("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true")
CLIP = "stage.grad_clip=0.05"


@pytest.fixture(scope="module")
def workspace(distill_workspace):
    return distill_workspace


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    """One plain process, never stopped: the reference every other run here must reproduce."""
    call_stage(compose_at(workspace, *distill_overrides(workspace, "fsdp_ref", CLIP)))
    return workspace / "fsdp_ref"


def rerun(overrides: list[str]) -> list[str]:
    """The same run's overrides with a fresh Hydra run dir (its logs apart from the crashed attempt's)."""
    return [o + "_again" if o.startswith("+output_dir=") else o for o in overrides]


def assert_same_lora(got: Path, want: Path) -> None:
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (want, got))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_a_run_crashed_on_one_process_finishes_on_two_fsdp_processes(workspace, uninterrupted, monkeypatch):
    crash_distillation(monkeypatch, workspace, "to_fsdp", extra=(CLIP,))
    proc = run_cli(workspace, *rerun(distill_overrides(workspace, "to_fsdp", CLIP, *CPU_FSDP, "logger=csv")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workspace / "to_fsdp" / "merged" / "training_summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 2 * (48 // 8)
    assert min(losses_by_step(workspace / "run_to_fsdp_again")) == 4  # went on from the step-4 checkpoint
    # sharded steps 4..11 (AdamW state restored into the shards) trained what the plain process trained
    assert_same_lora(workspace / "to_fsdp", uninterrupted)
    # the student was exported from the LoRA gathered over both ranks, unit by unit, not rank 0's shards
    assert "gathered the 8 trained tensors from their 8 units" in proc.stdout + proc.stderr
    assert json.loads((workspace / "to_fsdp" / "merged" / "artifact.json").read_text())["identity"][
        "trainer.devices"] == 2


@pytest.mark.slow  # a crashed 2-process run and a one-process resume: ~25 s on 2 idle cores
def test_an_fsdp_run_crashed_on_two_processes_finishes_on_one(workspace, uninterrupted):
    overrides = distill_overrides(workspace, "from_fsdp", CLIP)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "D3LLM_TEST_CRASH_AT": "5"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "crashing_cli.py"), *overrides, *CPU_FSDP,
                           "logger=none"], capture_output=True, text=True, env=env, timeout=600, cwd=workspace)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr
    assert (workspace / "from_fsdp.lightning" / "last.ckpt").is_file()  # written by FSDP: the gathered state
    summary = call_stage(compose_at(workspace, *rerun(overrides)))
    assert summary["resumed"] is True
    assert min(losses_by_step(workspace / "run_from_fsdp_again")) == 4
    assert_same_lora(workspace / "from_fsdp", uninterrupted)


def lora_only_optimizer(self):
    """configure_optimizers as it was before every student parameter went in: AdamW over the LoRA ones only."""
    params = [p for p in self.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
    h = self.hparams
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, h.warmup_steps, h.max_steps, h.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def test_a_checkpoint_of_a_lora_only_optimizer_resumes(workspace, uninterrupted, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(DistillModule, "configure_optimizers", lora_only_optimizer)
        crash_distillation(monkeypatch, workspace, "legacy", extra=(CLIP,))
    checkpoint = torch.load(workspace / "legacy.lightning" / "last.ckpt", weights_only=False)
    assert len(checkpoint["optimizer_states"][0]["param_groups"][0]["params"]) == 8  # the 8 LoRA matrices
    summary = call_stage(compose_at(workspace, *rerun(distill_overrides(workspace, "legacy", CLIP))))
    assert summary["resumed"] is True
    assert_same_lora(workspace / "legacy", uninterrupted)  # the AdamW moments went back to the right matrices


def test_renumbering_maps_lora_only_ids_to_positions_among_all_parameters():
    state = {"state": {0: "moments of A", 1: "moments of B"}, "param_groups": [{"params": [0, 1], "lr": 1.0}]}
    renumber_trainable_only(state, trainable=[2, 5], total=6)
    assert state == {"state": {2: "moments of A", 5: "moments of B"},
                     "param_groups": [{"params": [0, 1, 2, 3, 4, 5], "lr": 1.0}]}
    renumber_trainable_only(state, trainable=[2, 5], total=6)  # already numbered over all parameters: unchanged
    assert state["state"] == {2: "moments of A", 5: "moments of B"}


@pytest.mark.slow  # one 2-process run each: ~17 s on 2 idle cores
@pytest.mark.parametrize("setting", [
    "stage.gradient_checkpointing=true",  # recomputed layers: their nested LoRA units all-gather again in backward
    "trainer.fsdp_wrap=none",  # Lightning's default: the whole model one unit (float32), the full state gathered
])
def test_other_fsdp_settings_train_the_same_student(workspace, uninterrupted, setting):
    name = "fsdp_" + setting.split(".")[-1].split("=")[0]
    proc = run_cli(workspace, *distill_overrides(workspace, name, CLIP, *CPU_FSDP, setting, "logger=none"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_lora(workspace / name, uninterrupted)


@pytest.mark.slow  # one 2-process run and one plain run: ~22 s on 2 idle cores
def test_a_bf16_teacher_stays_bf16_in_the_fsdp_shards(workspace, monkeypatch):
    """fsdp_wrap=layer keeps model.dtype for the frozen units (the LoRA matrices, float32, have units of their own).
    Under 32-true FSDP computes in float32 from the bf16 shards, so it trains what one plain process trains on the
    same bf16-rounded teacher stored in float32 (whose LoRA A starts bf16-rounded too, as PEFT initialises it over
    a bf16 base)."""
    from d3llm_pipeline.models.tiny import load_tiny_teacher, save_tiny_teacher
    from d3llm_pipeline.stages import distill

    teacher, tok = load_tiny_teacher(workspace / "outputs" / "artifacts" / "teacher")
    with torch.no_grad():
        for param in teacher.model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    save_tiny_teacher(teacher, tok, workspace / "teacher_bf16_rounded")
    make_student = distill.make_student

    def bf16_rounded_lora(*args, **kwargs):
        student, tokenizer = make_student(*args, **kwargs)
        with torch.no_grad():
            for param in (p for p in student.parameters() if p.requires_grad):
                param.copy_(param.to(torch.bfloat16).float())
        return student, tokenizer

    monkeypatch.setattr(distill, "make_student", bf16_rounded_lora)
    call_stage(compose_at(workspace, *distill_overrides(workspace, "rounded_ref", CLIP, "logger=none",
                                                        f"stage.teacher_path={workspace / 'teacher_bf16_rounded'}")))
    proc = run_cli(workspace, *distill_overrides(workspace, "fsdp_bf16", CLIP, *CPU_FSDP, "model.dtype=bfloat16",
                                                 "logger=none"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is loaded in float32" not in proc.stdout + proc.stderr
    assert_same_lora(workspace / "fsdp_bf16", workspace / "rounded_ref")


@pytest.mark.slow  # per family: 16 trajectories, a plain and a 2-process fit: ~45 s on 2 idle cores
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_real_family_layers_as_fsdp_units_train_the_one_process_student(tmp_path, family):
    """LLaDA's and Dream's own decoder layers (the official-format fixtures, random weights) as FSDP units with
    their LoRA units inside, checkpointed as on GPUs: the sharded fit trains what one process trains."""
    from d3llm_pipeline.models.families.fixture_tokenizer import prepare_fixture

    prepare_fixture(OFFICIAL / f"{family}_tiny", tmp_path / "outputs" / "fixtures" / f"{family}_tiny")
    common = [f"experiment={family}_fixture", "task.n_train=16"]
    call_stage(compose_at(tmp_path, "stage=trajectory", "stage.n_prompts=16", *common,
                          f"+output_dir={tmp_path / 'run_traj'}"))
    fit = [*common, "stage=distill", "stage.epochs=1", "stage.batch_size=8", "stage.warmup_steps=1", CLIP,
           "stage.gradient_checkpointing=true", "logger=none"]
    call_stage(compose_at(tmp_path, *fit, f"stage.out_dir={tmp_path / 'plain'}", f"+output_dir={tmp_path / 'r1'}"))
    proc = run_cli(tmp_path, *fit, f"stage.out_dir={tmp_path / 'sharded'}", f"+output_dir={tmp_path / 'r2'}",
                   *CPU_FSDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_lora(tmp_path / "sharded", tmp_path / "plain")


@pytest.mark.slow  # a 2-job sweep, each job on 2 processes: ~30 s on 2 idle cores
def test_a_distill_sweep_relaunches_each_job_alone(tmp_path, workspace, monkeypatch):
    """Lightning's fsdp launcher re-runs the command once per extra device; in a Hydra multirun that command is the
    whole sweep. training/relaunch.py makes the extra process run its job alone: one sweep dir, each job once.
    A MASTER_PORT set beforehand (as ddp_spawn leaves in its parent) must not send job 2 to job 1's stale store."""
    import shutil

    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))

    root = tmp_path / "sweep"
    shutil.copytree(workspace / "outputs" / "artifacts", root / "outputs" / "artifacts")
    proc = run_cli(root, "-m", "stage=distill", "distill.only_correct=false", "distill.lora.r=4,8", "stage.epochs=1",
                   "stage.batch_size=8", "stage.val_every=1000", "task.n_test=16", *CPU_FSDP, "logger=none",
                   f"paths.root_dir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("Launching 2 jobs locally") == 1  # the extra processes did not start sweeps of their own
    sweeps = list((root / "outputs" / "multirun" / "distill").iterdir())
    assert len(sweeps) == 1 and sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1"]
    # each job's extra process ran that job (its own log in the job's dir), the second job's as well: the first
    # job's launcher state (LOCAL_RANK, MASTER_PORT, its process group) did not leak into it
    assert all((sweeps[0] / job / "__main___rank1.log").is_file() for job in ("0", "1"))
    students = sorted((root / "outputs" / "artifacts" / "students").glob("*/merged/training_summary.json"))
    assert len(students) == 2 and "2 jobs (0 failed) ranked" in log
