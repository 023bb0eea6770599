"""stage=ablation: the table against hand-computed numbers; the whole stage end to end in seconds (logger=wandb)."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from test_pipeline import STEP_OVERRIDES, steps_override  # the smoke steps stage=pipeline's test uses

from d3llm_pipeline.reporting.ablation_table import (
    ablation_rows,
    markdown_table,
    seed_mean_report,
    signed_pct,
    write_csv,
)
from d3llm_pipeline.reporting.aggregate import build_report
from d3llm_pipeline.reporting.aup import aup
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.stages.ablation import split_experiments, variant_overrides


def job(variant: str, tau: float, tpf: float, accuracy: float, tps: float) -> dict:
    return {"stage": "eval", "model": {"name": variant}, "decoder": {"name": "d3llm", "threshold": tau},
            "tpf": tpf, "accuracy": accuracy, "tokens_per_s": tps, "run_dir": f"{variant}/{tau}"}


def test_table_matches_hand_computed_values(tmp_path):
    runs = [
        job("full", 0.5, 8.0, 0.96, 100.0), job("full", 2.0, 10.0, 0.96, 120.0),
        job("random_masking", 0.5, 6.0, 0.96, 75.0), job("random_masking", 2.0, 12.0, 0.80, 150.0),
        job("single_block", 0.5, 10.0, 0.90, 130.0), job("single_block", 2.0, 11.0, 0.90, 140.0),
        job("dparallel", 2.0, 9.0, 0.50, 90.0),  # its τ = 0.5 job failed: no reference numbers
    ]
    report = build_report(runs)
    assert report["y_max"] == pytest.approx(96.0)  # one y_max for every variant: the best accuracy of any
    changes = {"full": "reference", "random_masking": "random masks", "single_block": "one block",
               "dparallel": "dParallel"}
    rows = {r["variant"]: r for r in ablation_rows(report, runs, changes, reference_threshold=0.5)}
    # full: 8·96 + ½·(10 − 8)·(96 + 96) = 960 (W(96) = 1 at y_max).
    assert rows["full"]["aup"] == pytest.approx(960.0)
    assert (rows["full"]["delta_tpf"], rows["full"]["delta_aup"]) == (0.0, 0.0)
    # random_masking: 80 is more than 5 points below 96, so only 6·96 = 576 counts; TPF 6 vs 8, AUP 576 vs 960.
    assert rows["random_masking"]["aup"] == pytest.approx(576.0)
    assert rows["random_masking"]["delta_tpf"] == pytest.approx(-25.0)
    assert rows["random_masking"]["delta_tps"] == pytest.approx(-25.0)  # 75 vs 100 tokens/s
    assert rows["random_masking"]["delta_aup"] == pytest.approx(-40.0)
    # single_block: 10·90 + ½·1·(90·W + 90·W), W = exp(−3·(1 − 90/96)) = exp(−0.1875) = 0.829029...
    assert rows["single_block"]["aup"] == pytest.approx(900.0 + 90.0 * 0.8290291181, abs=1e-6)
    assert rows["single_block"]["delta_tpf"] == pytest.approx(25.0)
    assert rows["single_block"]["delta_aup"] == pytest.approx(100.0 * (974.6126206 - 960.0) / 960.0, abs=1e-5)
    assert (rows["single_block"]["accuracy"], rows["single_block"]["tpf"], rows["single_block"]["tokens_per_s"]) == (
        pytest.approx(90.0), 10.0, 130.0)
    assert rows["dparallel"]["accuracy"] is None and rows["dparallel"]["delta_tpf"] is None
    assert rows["dparallel"]["aup"] == pytest.approx(9.0 * 50.0)  # the sweep's AUP is still known...
    assert rows["dparallel"]["delta_aup"] == pytest.approx(100.0 * (450.0 - 960.0) / 960.0)  # ...and compares

    table = markdown_table(list(rows.values()), 0.5, report["y_max"]).splitlines()
    assert table[0].startswith("| variant | what changed | seeds | accuracy (%) @ τ=0.5 | TPF @ τ=0.5 |")
    assert table[2] == "| full | reference | 1 | 96.0 | 8.00 | 100 | 960.0 | (ref) | (ref) | (ref) |  |"
    assert table[3] == ("| random_masking | random masks | 1 | 96.0 | 6.00 | 75 | 576.0 | -25.0% | -25.0% | -40.0% | "
                        "pseudo-trajectory masks: +18% TPF (README), +15% (blog) |")
    assert table[4] == ("| single_block | one block | 1 | 90.0 | 10.00 | 130 | 974.6 | +25.0% | +30.0% | +1.5% | "
                        "multi-block decoding: +30% TPF (README), +20% (blog) |")
    assert table[5] == "| dparallel | dParallel | 1 | n/a | n/a | n/a | 450.0 | n/a | n/a | -53.1% |  |"
    assert "y_max = 96.0" in table[-1]

    written = list(csv.DictReader(open(write_csv(list(rows.values()), tmp_path / "ablation.csv"))))
    assert [r["variant"] for r in written] == list(changes)
    assert float(written[2]["delta_aup_pct"]) == pytest.approx(rows["single_block"]["delta_aup"])
    assert written[3]["accuracy_pct"] == ""  # unknown stays empty, never 0
    assert written[2]["delta_aup_pct_ci95"] == "" and written[2]["delta_aup_pct_sign"] == "n/a"  # one seed: no CI


def seeded(variant: str, seed: int, tau: float, tpf: float, accuracy: float) -> dict:
    return {**job(f"{variant}@seed{seed}", tau, tpf, accuracy, 100.0 * tpf)}


def test_seeded_table_has_intervals_and_calls_signs_by_hand():
    """Three seeds: means ± t(0.975, 2)·sd/√3 (t = 4.303); Δ paired by seed; a sign only when 0 is outside."""
    runs = []
    for seed, (full_tpf, rm_tpf, sb_tpf) in enumerate([(8.0, 6.0, 8.4), (9.0, 6.3, 8.6), (10.0, 7.0, 10.2)]):
        for tau in (0.5, 2.0):  # one τ per point of each curve; accuracy 90 everywhere: AUP = 90 · TPF at τ 0.5
            runs += [seeded("full", seed, tau, full_tpf if tau == 0.5 else full_tpf + 1, 0.9),
                     seeded("random_masking", seed, tau, rm_tpf if tau == 0.5 else rm_tpf + 1, 0.9),
                     seeded("single_block", seed, tau, sb_tpf if tau == 0.5 else sb_tpf + 1, 0.9)]
    report = build_report(runs)
    changes = {"full": "reference", "random_masking": "random masks", "single_block": "one block"}
    rows = {r["variant"]: r for r in ablation_rows(report, runs, changes, 0.5, seeds=[0, 1, 2])}
    full, rm, sb = rows["full"], rows["random_masking"], rows["single_block"]
    assert full["seeds"] == 3 and full["tpf"] == pytest.approx(9.0)
    assert full["tpf_ci"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # sd of 8, 9, 10 is 1
    # random masking vs full per seed: -25%, -30%, -30% -> mean -28.33, sd 2.887, half 4.303·2.887/√3 = 7.17
    assert rm["delta_tpf"] == pytest.approx(-85.0 / 3)
    assert rm["delta_tpf_ci"] == pytest.approx(4.303 * math.sqrt(25.0 / 3) / math.sqrt(3))
    assert rm["delta_tpf_sign"] == "-"
    # single block: +5%, -4.44%, +2% -> the interval holds 0: not significant
    assert sb["delta_tpf"] == pytest.approx((5.0 - 40.0 / 9 + 2.0) / 3) and sb["delta_tpf_sign"] == "n.s."
    table = markdown_table(list(rows.values()), 0.5, report["y_max"]).splitlines()
    assert table[3].split(" | ")[2:5] == ["3", "90.0 ± 0.0", "6.43 ± 1.27"]  # sd 0.513 -> 4.303·0.513/√3
    assert "-28.3% ± 7.2 (-)" in table[3] and "(n.s.)" in table[4]
    assert "means over 3 training seeds" in table[-1]


def test_control_row_and_ratio_by_hand():
    """The control (the teacher decoded as `full`): its own row, and each row's AUP over its AUP, mean ± CI."""
    runs = [job("control", 0.5, 4.0, 0.9, 400.0), job("control", 2.0, 5.0, 0.9, 500.0)]
    for seed, tpf in enumerate([8.0, 9.0, 10.0]):  # accuracy 90 everywhere: AUP = 90 · (TPF at τ 0.5 + 1)
        runs += [seeded("full", seed, 0.5, tpf, 0.9), seeded("full", seed, 2.0, tpf + 1, 0.9)]
    report = build_report(runs)
    rows = {r["variant"]: r for r in ablation_rows(report, runs, {"full": "reference"}, 0.5, seeds=[0, 1, 2])}
    assert list(rows) == ["full", "control"]  # the control's row comes last
    full, control = rows["full"], rows["control"]
    assert control["aup"] == pytest.approx(450.0) and control["vs_control"] == pytest.approx(1.0)
    assert (control["seeds"], control["aup_ci"], control["vs_control_ci"]) == (1, None, None)  # one curve
    # full's AUPs 810, 900, 990 over 450: 1.8, 2.0, 2.2 -> mean 2.0, sd 0.2, half-width 4.303 · 0.2 / √3
    assert full["vs_control"] == pytest.approx(2.0)
    assert full["vs_control_ci"] == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    # the control's Δ pairs its one curve with each seed of full: TPF 4 vs 8, 9, 10
    assert control["delta_tpf"] == pytest.approx(-100.0 * (0.5 + 5 / 9 + 0.6) / 3)
    assert control["delta_tpf_sign"] == "-"
    table = markdown_table(list(rows.values()), 0.5, report["y_max"]).splitlines()
    assert "| AUP | AUP ÷ control | ΔTPF |" in table[0]
    assert table[2].split(" | ")[6:8] == ["900.0 ± 223.6", "2.00 ± 0.50"]
    # ΔTPF -50, -55.6, -60 %: sd 5.01, half-width 4.303 · 5.01 / √3 = 12.4
    assert table[3].split(" | ")[2:9] == ["1", "90.0", "4.00", "400", "450.0", "1.00", "-55.2% ± 12.4 (-)"]
    means = seed_mean_report(report, ["full"], [0, 1, 2])
    assert [(c["model"], c["seeds"]) for c in means["curves"]] == [("full", 3), ("control", 1)]
    without = ablation_rows(build_report(runs[2:]), runs[2:], {"full": "reference"}, 0.5, seeds=[0, 1, 2])
    assert [r["variant"] for r in without] == ["full"] and without[0]["vs_control"] is None
    assert "÷ control" not in markdown_table(without, 0.5, 90.0)  # no control: the table as before


def test_seed_means_curve_by_hand():
    """seed_mean_report: per τ the mean TPF / accuracy over seeds with t-intervals; AUP the seeds' mean AUP."""
    runs = [seeded("full", 0, 0.5, 8.0, 0.90), seeded("full", 0, 2.0, 10.0, 0.80),
            seeded("full", 1, 0.5, 9.0, 0.94), seeded("full", 1, 2.0, 12.0, 0.84),
            seeded("single_block", 0, 0.5, 7.0, 0.90)]  # seed 1 missing: its means are over one seed
    report = build_report(runs)
    means = seed_mean_report(report, ["full", "single_block"], [0, 1])
    full = next(c for c in means["curves"] if c["model"] == "full")
    assert [(p["threshold"], p["tpf"], p["accuracy"]) for p in full["points"]] == [
        (0.5, pytest.approx(8.5), pytest.approx(92.0)), (2.0, pytest.approx(11.0), pytest.approx(82.0))]
    assert full["points"][1]["tpf_ci"] == pytest.approx(12.706)  # 10, 12: sd √2, half = t(0.975, 1) · √2 / √2
    aups = [c["aup"] for c in report["curves"] if c["model"].startswith("full@")]
    assert full["aup"] == pytest.approx(sum(aups) / 2) and full["seeds"] == 2
    assert full["aup_ci"] == pytest.approx(12.706 * abs(aups[0] - aups[1]) / 2)  # sd = |a - b| / √2, / √2
    single = next(c for c in means["curves"] if c["model"] == "single_block")
    assert single["seeds"] == 1 and single["aup_ci"] is None and single["points"][0]["tpf"] == 7.0
    assert means["y_max"] == report["y_max"] == pytest.approx(94.0)


def test_signed_percent_always_has_a_sign():
    assert [signed_pct(v) for v in (12.34, -4.0, -0.04, 0.0, None)] == ["+12.3%", "-4.0%", "+0.0%", "+0.0%", "n/a"]


def test_variant_experiment_goes_on_top_of_the_users():
    user = ["experiment=smoke", "threads=1", "decode.batch_size=8"]
    assert split_experiments(user) == (["threads=1", "decode.batch_size=8"], ["smoke"])
    assert variant_overrides(user, "kv_cache")[-1] == "experiment=[smoke,ablation_kv_cache]"
    assert variant_overrides(["threads=1"], "full") == ["threads=1", "experiment=[ablation_full]"]
    from d3llm_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="decode="):
        variant_overrides(["decode=vanilla"], "full")


# stage=pipeline's smoke steps, but a teacher of 60 steps at the old lr 2e-3: it already emits non-EOS tokens
# (TPF > 0; at the default 1e-3 it still writes only EOS) while staying seconds-cheap (accuracy is still 0).
STEPS = steps_override({**STEP_OVERRIDES, "teacher": ["stage.max_steps=60", "stage.lr=2e-3", "stage.warmup_steps=1",
                                                      "stage.batch_size=8", "stage.val_every=1000",
                                                      "stage.val_problems=4"]})


def test_ablation_stage_end_to_end(tmp_path):
    overrides = ["experiment=smoke", "threads=1", "task.n_train=100", f"paths.root_dir={tmp_path}", "logger=wandb"]
    run_dir = tmp_path / "ablation"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=ablation", "stage.variants=[full,random_masking,single_block]", "stage.thresholds=[0.5,2.0]",
            "stage.seeds=[0]",
            STEPS, f"+output_dir={run_dir}", f"+pipeline_overrides={overrides}", *overrides])
        result = call_stage(cfg)

    artifacts = tmp_path / "outputs" / "artifacts_smoke"  # experiment=smoke stayed underneath every variant
    assert (artifacts / "student" / "merged" / "model.safetensors").is_file()
    own = artifacts / "ablation" / "random_masking" / "student" / "merged"
    assert json.loads((own / "training_summary.json").read_text())["recipe"]["masking"] == "random"

    rows = list(csv.DictReader(open(run_dir / "ablation.csv")))
    assert [r["variant"] for r in rows] == ["full", "random_masking", "single_block", "control"] == [
        r["variant"] for r in result["rows"]]
    md = (run_dir / "ablation.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in md if line.startswith("| ")][1:] == [
        "| full", "| random_masking", "| single_block", "| control"]  # after the header, one row per variant
    assert {p.name for p in run_dir.iterdir()} >= {"aup_points.csv", "aup.json", "aup_curve.png"}

    metrics = {v: [json.loads((run_dir / "variants" / v / "seed_0" / str(i) / "metrics.json").read_text())
                   for i in (0, 1)]
               for v in ("full", "random_masking", "single_block")}
    # the control: the teacher, decoded as `full` is (stage.control, on by default), one sweep
    metrics["control"] = [json.loads((run_dir / "control" / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert metrics["control"][1]["model"]["path"] == str(artifacts / "teacher")
    assert [m["decoder"]["rule"] for m in metrics["control"]] == ["d3llm", "d3llm"]
    assert metrics["full"][0]["decoder"]["rule"] == "d3llm" and metrics["single_block"][0]["decoder"]["rule"] == (
        "threshold")
    assert metrics["random_masking"][1]["model"]["path"] == str(own)
    assert metrics["single_block"][0]["model"]["path"] == str(artifacts / "student" / "merged")
    assert [m["decoder"]["threshold"] for m in metrics["full"]] == [0.5, 2.0]
    y_max = max(100.0 * m["accuracy"] for jobs in metrics.values() for m in jobs)
    full_tpf = metrics["full"][0]["tpf"]
    assert full_tpf > 0
    for row in rows:
        ref = metrics[row["variant"]][0]  # τ = 0.5, the reference threshold
        assert float(row["accuracy_pct"]) == pytest.approx(100.0 * ref["accuracy"])
        assert float(row["tpf"]) == pytest.approx(ref["tpf"])
        assert float(row["tokens_per_s"]) == pytest.approx(ref["tokens_per_s"])
        assert float(row["delta_tpf_pct"]) == pytest.approx(100.0 * (ref["tpf"] - full_tpf) / full_tpf)
        pairs = [(m["tpf"], 100.0 * m["accuracy"]) for m in metrics[row["variant"]] if m["tpf"] > 0]
        expected = aup(pairs, y_max) if pairs and y_max > 0 else 0.0
        assert math.isclose(float(row["aup"]), expected, abs_tol=1e-9)

    # logger=wandb: every step logged into its own run, and the report run holds the ablation table.
    assert (run_dir / "variants" / "single_block" / "seed_0" / "1" / "wandb_run_id.txt").is_file()
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    (logged,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/files/media/table/report/ablation_*.table.json")
    table = json.loads(logged.read_text())
    assert table["columns"] == list(rows[0]) and [r[0] for r in table["data"]] == [r["variant"] for r in rows]
    tpf = table["columns"].index("tpf")
    assert [r[tpf] for r in table["data"]] == [pytest.approx(float(r["tpf"])) for r in rows]

    # A second seed: seed 0's evals are reused (same model and settings), seed 1 distils its own default student
    # and the table reports means ± intervals over the two seeds.
    reused = run_dir / "variants" / "single_block" / "seed_0" / "0" / "metrics.json"
    stamp = reused.stat().st_mtime_ns
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=ablation", "stage.variants=[full,single_block]", "stage.thresholds=[0.5,2.0]",
            "stage.seeds=[0,1]", STEPS, f"+output_dir={run_dir}", f"+pipeline_overrides={overrides}", *overrides])
        again = call_stage(cfg)
    assert reused.stat().st_mtime_ns == stamp  # not decoded again (nor is the control, which has no seed)
    seed1 = json.loads((run_dir / "variants" / "single_block" / "seed_1" / "0" / "metrics.json").read_text())
    assert seed1["model"]["path"] == str(artifacts / "student_seed1" / "merged")
    summary = json.loads((artifacts / "student_seed1" / "merged" / "training_summary.json").read_text())
    assert summary["fingerprint"] != json.loads(
        (artifacts / "student" / "merged" / "training_summary.json").read_text())["fingerprint"]
    two = {r["variant"]: r for r in again["rows"]}
    assert two["single_block"]["seeds"] == 2 and two["single_block"]["tpf_ci"] is not None
    per_seed = [json.loads((run_dir / "variants" / "single_block" / f"seed_{s}" / "0" / "metrics.json").read_text())
                ["tpf"] for s in (0, 1)]
    assert two["single_block"]["tpf"] == pytest.approx(sum(per_seed) / 2)
    means = json.loads((run_dir / "aup_means.json").read_text())  # what aup_curve.png draws with two seeds
    assert sorted(c["model"] for c in means["curves"]) == ["control", "full", "single_block"]
    assert min(p["tpf"] for p in next(c for c in means["curves"] if c["model"] == "single_block")["points"]) \
        == pytest.approx(sum(per_seed) / 2)  # τ 0.5 has the lowest TPF


def test_t_quantiles_match_scipy():
    from scipy import stats

    from d3llm_pipeline.reporting.intervals import mean_ci, sign_of, t975

    for df in range(1, 61):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-3)
    assert mean_ci([]) == (None, None) and mean_ci([2.0]) == (2.0, None)
    assert [sign_of(1.0, 0.5), sign_of(-1.0, 0.5), sign_of(0.2, 0.5), sign_of(1.0, None)] == ["+", "-", "n.s.", "n/a"]
