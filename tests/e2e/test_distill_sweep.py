"""Distill sweeps and fingerprinted artifacts: one student per job, reuse only on matching settings, a leaderboard.

Everything runs on conftest's random 1-layer teacher and 48 of its trajectories (accuracy is meaningless; the
mechanics are what is tested), the sweeps through the real entry point (`python -m d3llm_pipeline -m ...`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import compose_at, run_cli

from d3llm_pipeline.artifacts import ARTIFACT_FILE, artifact_lock, read_identity
from d3llm_pipeline.config import job_dirname
from d3llm_pipeline.errors import ConfigError, PipelineError
from d3llm_pipeline.models.tiny import load_tiny_teacher
from d3llm_pipeline.reporting.student_table import sweep_labels
from d3llm_pipeline.stages import call_stage

# Small and fast: one epoch of 6 steps, 8 test problems, a two-point τ sweep per student.
DISTILL = ["stage=distill", "distill.only_correct=false", "stage.batch_size=8", "stage.epochs=1",
           "stage.val_every=1000", "stage.val_problems=4", "task.n_val=4", "task.n_test=8", "threads=1",
           "stage.checkpoint_every=3", "trainer.enable_progress_bar=false", "stage.compare.thresholds=[0.5,2.0]"]


@pytest.fixture(scope="module")
def workspace(distill_workspace) -> Path:
    return distill_workspace


def test_job_dirnames_are_unique_readable_and_need_no_quoting():
    assert job_dirname(["stage=distill", "distill.lora.r=4", "threads=1", "hydra/launcher=local"]) == "distill.lora.r_4"
    # With the swept keys known: those overrides spelled out, the fixed ones hashed (other fixed settings, other dir).
    swept = job_dirname(["distill.lora.r=4", "stage.epochs=1", "threads=1"], {"distill.lora.r"})
    assert swept.startswith("distill.lora.r_4@") and len(swept) == len("distill.lora.r_4@") + 8
    assert swept != job_dirname(["distill.lora.r=4", "stage.epochs=2"], {"distill.lora.r"})
    assert job_dirname(["distill.lora.r=4", "threads=2"], {"distill.lora.r"}) == "distill.lora.r_4"
    assert job_dirname(["distill.curriculum.window_sizes=[8,16]", "+x=a/b"]) == \
        "distill.curriculum.window_sizes_8-16+x_a_b"
    assert job_dirname(["stage=distill"]) == "default"
    long = job_dirname([f"k{i}=v" for i in range(60)])
    assert len(long) == 120 and long != job_dirname([f"k{i}=v" for i in range(61)])


def test_sweep_labels_keep_only_what_tells_jobs_apart():
    assert sweep_labels([["a=1", "b=2"], ["a=1", "b=3"]]) == ["b=2", "b=3"]
    assert sweep_labels([["a=1"], ["a=1"]]) == ["job 0", "job 1"]


def test_a_locked_artifact_cannot_be_written_by_a_second_writer(tmp_path):
    target = tmp_path / "students" / "a"
    with artifact_lock(target):
        with pytest.raises(PipelineError, match=f"pid {os.getpid()}"):
            with artifact_lock(target):
                pass
    with artifact_lock(target):  # released: the next writer gets it
        pass


def test_teacher_reuse_only_on_matching_settings(tmp_path):
    base = ["stage=teacher", "experiment=smoke", "stage.max_steps=2", "stage.warmup_steps=0", "stage.batch_size=4",
            "stage.val_every=2", "stage.val_problems=2", "trainer.enable_progress_bar=false", "logger=none"]
    first = call_stage(compose_at(tmp_path, *base, f"+output_dir={tmp_path / 'r1'}"))
    teacher_dir = Path(first["model"]["path"])
    recorded = read_identity(teacher_dir)
    assert recorded["kind"] == "teacher" and recorded["identity"]["model.arch.n_layer"] == 1
    assert recorded["fingerprint"] == first["fingerprint"]
    weights = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    # Same settings (validation cadence and logger do not shape the weights): reused, not retrained.
    again = call_stage(compose_at(tmp_path, *base, "stage.val_every=1", f"+output_dir={tmp_path / 'r2'}"))
    assert again["fingerprint"] == first["fingerprint"]
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == weights
    # Another architecture or budget: a one-line error naming what differs and both ways out.
    with pytest.raises(ConfigError) as err:
        call_stage(compose_at(tmp_path, *base, "model.arch.n_layer=2", "stage.max_steps=3",
                              f"+output_dir={tmp_path / 'r3'}"))
    message = str(err.value)
    assert "model.arch.n_layer: 1 -> 2" in message and "stage.max_steps: 2 -> 3" in message
    assert "stage.overwrite=true" in message and "model.path=" in message and "\n" not in message
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == weights  # nothing was touched
    # A teacher without artifact.json (an older version's) is not reused blindly.
    (teacher_dir / ARTIFACT_FILE).unlink()
    with pytest.raises(ConfigError, match="does not record the settings"):
        call_stage(compose_at(tmp_path, *base, f"+output_dir={tmp_path / 'r4'}"))


def test_student_reuse_resume_and_mismatch(workspace, monkeypatch):
    from d3llm_pipeline.training.distill_module import DistillModule

    out = workspace / "student_a"
    overrides = [*DISTILL, "distill.lora.r=2", f"stage.out_dir={out}"]
    original = DistillModule.training_step

    def crash_at_step_4(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        call_stage(compose_at(workspace, *overrides, f"+output_dir={workspace / 'ra'}"))
    monkeypatch.setattr(DistillModule, "training_step", original)
    assert read_identity(out.with_name("student_a.lightning"))["kind"] == "student"
    # Resuming that checkpoint under another recipe is refused, naming the key...
    with pytest.raises(ConfigError, match=r"distill\.lora\.r: 2 -> 4"):
        call_stage(compose_at(workspace, *DISTILL, "distill.lora.r=4", f"stage.out_dir={out}",
                              f"+output_dir={workspace / 'rb'}"))
    # ... while the same recipe resumes it and finishes.
    summary = call_stage(compose_at(workspace, *overrides, f"+output_dir={workspace / 'rc'}"))
    assert summary["resumed"] is True and summary["out_dir"] == str(out)
    assert read_identity(out / "merged")["fingerprint"] == summary["fingerprint"]
    weights = (out / "merged" / "model.safetensors").stat().st_mtime_ns
    reused = call_stage(compose_at(workspace, *overrides, "stage.val_every=500", f"+output_dir={workspace / 'rd'}"))
    assert reused["fingerprint"] == summary["fingerprint"]
    assert (out / "merged" / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(ConfigError, match=r"distill\.loss\.entropy_weight: 2\.0 -> 0\.0"):
        call_stage(compose_at(workspace, *overrides, "distill.loss.entropy_weight=0",
                              f"+output_dir={workspace / 're'}"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_parallel_distill_sweep_trains_one_student_per_job_and_ranks_them(workspace):
    sweep = workspace / "sweep_parallel"
    proc = run_cli(workspace, "-m", *DISTILL, "distill.lora.r=2,8", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    students = workspace / "outputs" / "artifacts" / "students"
    dirs = {p.name.split("@")[0]: p for p in students.iterdir() if p.is_dir()}  # <swept overrides>@<fixed hash>
    assert sorted(dirs) == ["distill.lora.r_2", "distill.lora.r_8"]
    assert len({p.name.split("@")[1] for p in dirs.values()}) == 1  # the same fixed settings
    for out in dirs.values():  # two intact students: published, fingerprinted, loadable, nothing left behind
        assert json.loads((out / "merged" / "training_summary.json").read_text())["steps"] == 6
        assert read_identity(out / "merged")["kind"] == "student"
        assert not out.with_name(out.name + ".lightning").exists()
    a, _ = load_tiny_teacher(dirs["distill.lora.r_2"] / "merged")
    b, _ = load_tiny_teacher(dirs["distill.lora.r_8"] / "merged")
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    # The leaderboard: both students and the teacher, each over the two-point τ sweep.
    rows = {r["student"]: r for r in _read_csv(sweep / "students.csv")}
    assert set(rows) == {"distill.lora.r=2", "distill.lora.r=8", "teacher"}
    assert rows["teacher"]["status"] == "teacher" and rows["distill.lora.r=2"]["status"] == "ok"
    assert rows["distill.lora.r=8"]["dir"] == str(dirs["distill.lora.r_8"])
    report = json.loads((sweep / "aup.json").read_text())
    assert sorted(len(c["points"]) for c in report["curves"]) == [2, 2, 2] and report["failed_jobs"] == []
    assert (sweep / "aup_curve.png").stat().st_size > 0 and "| distill.lora.r=2 |" in (sweep / "students.md").read_text()


def test_sweep_reports_a_failed_job_and_reuses_students_and_evals(workspace):
    # Job 0 is the parallel sweep's r=2 student spelled out (the default target modules): a new dir, but the same
    # fingerprint, so its evals (keyed by model fingerprint and request) and the teacher's are reused.
    sweep = workspace / "sweep_failing"
    proc = run_cli(workspace, "-m", *DISTILL, "distill.lora.r=2", "logger=wandb",
               "distill.lora.target_modules=[c_attn,c_proj,c_fc],[no_such_layer]", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no_such_layer" in (sweep / "1" / "error.txt").read_text()
    rows = {r["student"]: r for r in _read_csv(sweep / "students.csv")}
    failed = rows["distill.lora.target_modules=[no_such_layer]"]
    assert failed["status"].startswith("failed:") and "no_such_layer" in failed["status"] and failed["aup"] == ""
    assert rows["distill.lora.target_modules=[c_attn,c_proj,c_fc]"]["status"] == "ok" and "teacher" in rows
    assert (proc.stdout + proc.stderr).count("compare: reusing the eval") == 4  # 2 τ x (student + teacher)
    report = json.loads((sweep / "aup.json").read_text())
    assert len(report["failed_jobs"]) == 1 and "no_such_layer" in report["failed_jobs"][0]
    assert "sweep: 1 of 2 jobs failed" in proc.stderr
    # The table is also a wandb report run (offline) in the sweep dir, in the sweep's group.
    run_id = (sweep / "wandb_run_id.txt").read_text().strip()
    (run_dir,) = (sweep / "wandb").glob(f"offline-run-*-{run_id}")
    (table,) = (run_dir / "files" / "media" / "table" / "report").glob("students_*.table.json")
    assert {row[0] for row in json.loads(table.read_text())["data"]} == set(rows)
    (record,) = run_dir.glob("run-*.wandb")  # the offline run's own record holds its settings
    assert f"default/{sweep.name}".encode() in record.read_bytes()  # group = <experiment_name>/<sweep dir>
