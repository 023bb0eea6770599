"""Sweep aggregation: metrics.json files -> AUP curves, failed jobs reported and left out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import CONF

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


def test_report_stage_logs_curves_and_leaderboard_to_wandb_offline(tmp_path):
    from hydra import compose, initialize_config_dir

    from d3llm_pipeline.reporting.wandb_report import CURVE_COLUMNS
    from d3llm_pipeline.stages import call_stage

    fake_job(tmp_path / "sweep", "0", "teacher", "threshold", 8.0, 0.99)
    fake_job(tmp_path / "sweep", "1", "teacher", "threshold", 11.0, 0.97)
    fake_job(tmp_path / "sweep", "2", "student", "d3llm", 10.0, 0.98)
    out = tmp_path / "report"
    conf = CONF
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=report", "logger=wandb", "experiment_name=grouped", f"paths.root_dir={tmp_path}",
            f"stage.runs=[{tmp_path / 'sweep'}]", f"+output_dir={out}"])
    call_stage(cfg)
    import wandb

    # run.finish() can return before wandb's service process has written the run file (seen on CI: only its 7-byte
    # header, 2 busy workers); a CLI run gets this at exit. Tearing the service down waits for it to close the file.
    wandb.teardown()

    report = json.loads((out / "aup.json").read_text())
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{run_id}")  # offline: nothing left the machine
    # Offline, wandb keeps each logged table as files/media/table/<key>_<step>_<hash>.table.json; the records
    # (history, the plot's chart spec, config) go to run-<id>.wandb.
    tables = {p.name.split("_0_")[0]: json.loads(p.read_text())
              for p in (run_dir / "files" / "media" / "table" / "report").glob("*.table.json")}
    assert set(tables) == {"curves", "leaderboard", "aup_curve_table"}
    assert tables["curves"]["columns"] == CURVE_COLUMNS
    expected = sorted([c["model"], c["decoder"], p["threshold"], p["tpf"], p["accuracy"], c["aup"]]
                      for c in report["curves"] for p in c["points"])
    assert sorted(tables["curves"]["data"]) == expected  # the very numbers of aup.json (JSON floats round-trip)
    assert len(expected) == 3 and {row[0] for row in expected} == {"teacher", "student"}
    board = {row[0]: row for row in tables["leaderboard"]["data"]}
    assert tables["leaderboard"]["columns"][:3] == ["model", "decoder", "aup"]
    assert board["teacher"][2] == pytest.approx(next(c["aup"] for c in report["curves"] if c["model"] == "teacher"))
    records = wandb_records(run_dir / f"run-{run_id}.wandb")
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.job_type) == ("grouped", "report")  # a dashboard groups by experiment
    logged = {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
              for item in r.history.item}
    assert {"report/curves/nrows", "report/leaderboard/nrows", "report/aup_curve_table/nrows"} <= logged
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary["aup/student/d3llm"] == pytest.approx(980.0) and summary["report/curves/nrows"] == 3
    assert b"wandb/line" in (run_dir / f"run-{run_id}.wandb").read_bytes()  # the line plot's chart spec


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file (.wandb): a 7-byte header, then LevelDB-log framing in 32 KiB
    blocks, each chunk = crc32 (4) + length (2, little-endian) + type (1: full, 2: first, 3: middle, 4: last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is zero padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def lmeval_results(path: Path, task: str, scores: dict, threshold: float, tokens: int, nfe: int, model="d3llm-llada"):
    """A results file as `d3llm-lm-eval --output_path` writes it (lm-eval's layout, our model's config.d3llm)."""
    summary = {"n": 2, "total_nfe": nfe, "total_tokens": tokens, "tpf": tokens / nfe}
    data = {"results": {task: {"alias": task, **scores}},
            "config": {"model": "d3llm", "d3llm": {"model": model, "family": "llada", "decode": "d3llm",
                                                  "specs": {task: {"rule": "d3llm", "threshold": threshold}},
                                                  "summary": {**summary, "by_task": {task: summary}}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_report_reads_lm_eval_results_files(tmp_path):
    out = tmp_path / "lmeval" / "d3llm-llada"
    # GSM8K-CoT scores with flexible_extract (conf/task/gsm8k_cot.yaml metric), not the first metric lm-eval lists
    for i, (tau, acc, tokens, nfe) in enumerate([(0.3, 0.80, 400, 100), (0.6, 0.78, 400, 50)]):
        lmeval_results(out / f"results_2026-12-07T10-0{i}.json", "d3llm_gsm8k_cot_zeroshot",
                       {"strict_match,none": 0.1, "strict_match_stderr,none": 0.01, "flexible_extract,none": acc},
                       tau, tokens, nfe)
    (out / "results_other.json").write_text(json.dumps({"results": {"x": {"acc,none": 1.0}}, "config": {}}))
    runs, failed = collect_runs([tmp_path / "lmeval"])
    assert len(runs) == 2 and len(failed) == 1 and "another model" in failed[0]
    report = build_report(runs, y_max={"gsm8k_cot": 80.0})
    (curve,) = report["curves"]
    assert curve["task"] == "gsm8k_cot" and curve["model"] == "d3llm-llada" and curve["decoder"] == "d3llm"
    assert [(p["tpf"], p["accuracy"], p["threshold"]) for p in curve["points"]] == [(4.0, 80.0, 0.3),
                                                                                  (8.0, 78.0, 0.6)]
    assert curve["aup"] == pytest.approx(aup([(4.0, 80.0), (8.0, 78.0)], 80.0))
    # an lm-eval task no pipeline task runs (arith) scores with exact_match
    lmeval_results(tmp_path / "arith" / "results_1.json", "arith", {"chain_correct,none": 0.5,
                                                                    "exact_match,none": 0.25}, 0.5, 30, 10, "tiny")
    (run,) = collect_runs([tmp_path / "arith"])[0]
    assert run["task"]["name"] == "arith" and run["accuracy"] == 0.25 and run["tpf"] == 3.0
