"""End-to-end through the real entry point (`python -m d3llm_pipeline ...`) on a seconds-sized teacher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

SMOKE_TEACHER = [
    "stage=teacher", "experiment=smoke", "stage.max_steps=4", "stage.warmup_steps=1", "stage.batch_size=8",
    "stage.val_every=2", "stage.val_problems=8", "stage.checkpoint_every=2", "threads=1",
    "trainer.log_every_n_steps=1",
]


def cli(root: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """Run the entry point from `root` as the working directory: paths default to <root>/outputs."""
    return run_cli(root, *(["-m"] if multirun else []), *overrides)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    proc = cli(root, *SMOKE_TEACHER, f"hydra.run.dir={root}/run_teacher")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_teacher_writes_hf_checkpoint_and_metrics(trained_root):
    ckpt = trained_root / "outputs" / "artifacts_smoke" / "teacher"
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert (ckpt / "tokenizer.json").is_file()
    summary = json.loads((ckpt / "training_summary.json").read_text())
    assert summary["steps"] == 4
    assert "val/accuracy" in summary["final_metrics"] and "train/loss" in summary["final_metrics"]
    assert not (ckpt.parent / "teacher.lightning").exists()  # resume state removed once published
    metrics_csv = (trained_root / "run_teacher" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics_csv and "val/loss" in metrics_csv


def test_rerun_reuses_finished_teacher(trained_root):
    ckpt = trained_root / "outputs" / "artifacts_smoke" / "teacher" / "model.safetensors"
    before = ckpt.stat().st_mtime_ns
    proc = cli(trained_root, *SMOKE_TEACHER, f"hydra.run.dir={trained_root}/run_teacher2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ckpt.stat().st_mtime_ns == before
    assert "reusing it" in proc.stdout + proc.stderr


def test_eval_writes_metrics_and_generations(trained_root):
    run_dir = trained_root / "run_eval"
    proc = cli(trained_root, "stage=eval", "experiment=smoke", "decode=vanilla", "stage.limit=6", "threads=1",
               f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert metrics["n"] == len(rows) == 6
    assert metrics["total_nfe"] == sum(r["nfe"] for r in rows)
    assert metrics["total_tokens"] == sum(r["tokens"] for r in rows)
    assert metrics["tpf"] == pytest.approx(metrics["total_tokens"] / metrics["total_nfe"])
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
    assert metrics["decoder"]["rule"] == "vanilla" and metrics["versions"]["torch"].startswith("2.13")
    assert {"prompt", "output", "answer", "correct", "nfe", "tokens"} <= set(rows[0])


def test_threshold_multirun_writes_one_metrics_per_job(trained_root):
    proc = cli(trained_root, "stage=eval", "experiment=smoke", "decode=threshold", "stage.limit=4", "threads=1",
               "decode.threshold=0.1,2.0", multirun=True)  # default sweep dir: outputs/multirun/eval/<time>/<job>
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((trained_root / "outputs" / "multirun" / "eval").glob("*/*/metrics.json"))
    assert len(jobs) == 2
    thresholds = sorted(json.loads(p.read_text())["decoder"]["threshold"] for p in jobs)
    assert thresholds == [0.1, 2.0]
    # The multirun callback turned the sweep into an AUP report.
    sweep = jobs[0].parent.parent
    report = json.loads((sweep / "aup.json").read_text())
    assert [len(c["points"]) for c in report["curves"]] == [2]
    assert (sweep / "aup_curve.png").stat().st_size > 0 and (sweep / "aup_points.csv").is_file()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [(["stage=nonsense"], "unknown stage 'nonsense'"), (["decode.threshold=-1"], "decode.threshold must be > 0")],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, overrides, needle):
    proc = cli(tmp_path, *overrides, f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_teacher_names_the_command(tmp_path):
    proc = cli(tmp_path, "stage=eval", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    assert "python -m d3llm_pipeline stage=teacher" in proc.stderr


def test_wandb_logger_runs_offline(trained_root):
    run_dir = trained_root / "run_eval_wandb"
    proc = cli(trained_root, "stage=eval", "experiment=smoke", "stage.limit=4", "threads=1", "logger=wandb",
               f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    offline_runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) == 1  # offline: nothing was sent anywhere


def test_sweep_preset_runs_as_a_multirun_and_logs_its_report_to_wandb(trained_root):
    # No -m: the preset sets hydra.mode=MULTIRUN; stacked on the smoke setup; the command line's τ list replaces
    # the preset's eight values.
    sweep = trained_root / "sweep_preset"
    proc = cli(trained_root, "stage=eval", "experiment=[smoke,sweep_d3llm]", "decode.threshold=0.5,2.0",
               "stage.limit=4", "threads=1", "logger=wandb", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [(m["decoder"]["rule"], m["decoder"]["threshold"]) for m in jobs] == [("d3llm", 0.5), ("d3llm", 2.0)]
    assert (sweep / "aup.json").is_file()
    # The multirun callback logged the report as its own offline wandb run in the sweep dir.
    run_id = (sweep / "wandb_run_id.txt").read_text().strip()
    (run_dir,) = (sweep / "wandb").glob(f"offline-run-*-{run_id}")
    (curves,) = (run_dir / "files" / "media" / "table" / "report").glob("curves_*.table.json")
    rows = json.loads(curves.read_text())["data"]
    assert sorted((r[2], r[3]) for r in rows) == [(0.5, jobs[0]["tpf"]), (2.0, jobs[1]["tpf"])]
    # the plot as a figure too, and each job's run named by what the sweep varies
    assert list((run_dir / "files" / "media" / "images" / "report").glob("aup_curve_figure_*.png"))
    job_id = (sweep / "0" / "wandb_run_id.txt").read_text().strip()
    (job_run,) = (sweep / "0" / "wandb").glob(f"offline-run-*-{job_id}/run-{job_id}.wandb")
    assert b"/eval decode.threshold=0.5" in job_run.read_bytes()
