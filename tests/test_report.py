"""Sweep aggregation: metrics.json files -> AUP curves, failed jobs reported and left out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report
from d3llm_pipeline.reporting.aup import aup


def fake_job(root: Path, name: str, model: str, decoder: str, tpf: float, accuracy: float | None) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    if accuracy is not None:  # None: a job that crashed before writing metrics
        metrics = {"stage": "eval", "model": {"name": model}, "decoder": {"name": decoder, "threshold": tpf / 10},
                   "tpf": tpf, "accuracy": accuracy}
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_groups_curves_and_reports_failures(tmp_path):
    sweep_a, sweep_b = tmp_path / "teacher", tmp_path / "student"
    fake_job(sweep_a, "0", "teacher", "threshold", 8.0, 0.99)
    fake_job(sweep_a, "1", "teacher", "threshold", 11.0, 0.87)
    fake_job(sweep_a, "2", "teacher", "threshold", 12.0, None)
    fake_job(sweep_b, "0", "student", "threshold", 10.0, 0.98)
    fake_job(sweep_b, "1", "student", "threshold", 12.0, 0.95)
    runs, failed = collect_runs([sweep_a, sweep_b, tmp_path / "nope"])
    assert len(runs) == 4 and failed == [str(sweep_a / "2"), f"{tmp_path / 'nope'} (missing)"]
    report = build_report(runs)
    assert report["y_max"] == pytest.approx(99.0)
    by_model = {c["model"]: c for c in report["curves"]}
    # Same formula as the tested AUP function, over each model's own points (87 is > 5 below 99: dropped).
    assert by_model["teacher"]["aup"] == pytest.approx(aup([(8, 99), (11, 87)], 99.0)) == pytest.approx(8 * 99)
    assert by_model["student"]["aup"] == pytest.approx(aup([(10, 98), (12, 95)], 99.0))
    assert [c["model"] for c in report["curves"]] == ["student", "teacher"]  # best AUP first
    assert leaderboard(report).splitlines()[2].startswith("| student | threshold |")

    written = write_report(tmp_path / "out", report, failed)
    assert {p.name for p in written} == {"aup_points.csv", "aup.json", "aup_curve.png"}
    rows = list(csv.DictReader(open(tmp_path / "out" / "aup_points.csv")))
    assert len(rows) == 4 and {r["model"] for r in rows} == {"teacher", "student"}
    assert json.loads((tmp_path / "out" / "aup.json").read_text())["failed_jobs"] == failed


def test_explicit_y_max_is_used(tmp_path):
    fake_job(tmp_path, "0", "m", "threshold", 4.0, 0.5)
    runs, _ = collect_runs([tmp_path])
    assert build_report(runs, y_max=80.0)["curves"][0]["aup"] == pytest.approx(4.0 * 50.0)


def test_all_zero_accuracy_or_tpf_gives_zero_aup(tmp_path):
    fake_job(tmp_path, "0", "untrained", "threshold", 3.0, 0.0)
    fake_job(tmp_path, "1", "untrained", "threshold", 0.0, 0.0)  # generated nothing: no TPF to plot
    runs, _ = collect_runs([tmp_path])
    curve = build_report(runs)["curves"][0]
    assert curve["aup"] == 0.0 and curve["points_kept"] == 1 and len(curve["points"]) == 2
