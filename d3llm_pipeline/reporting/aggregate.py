"""Aggregate eval jobs into AUP curves: read every `metrics.json` (and d3llm-lm-eval results file), group by (model,
decoder), compute AUP.

Used by the Hydra multirun callback (a sweep's own dir) and by `stage=report` (any set of run dirs).

    runs, failed = collect_runs([sweep_dir])
    report = build_report(runs)                 # {"y_max": .., "curves": [{model, decoder, points, aup}, ...]}
    write_report(out_dir, report, failed)       # aup_points.csv, aup.json, aup_curve.png
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.reporting.aup import aup, kept_points
from d3llm_pipeline.reporting.lmeval_results import lmeval_runs


def _failure(job: Path) -> str:
    """'<job dir> (<first line of its error.txt>)' for a job that wrote one (a failed multirun job), else the dir."""
    try:
        lines = [line for line in (job / "error.txt").read_text().splitlines() if line.strip()]
    except OSError:
        return str(job)
    return f"{job} ({lines[0].removeprefix('error: ')})" if lines else str(job)


def collect_runs(dirs: list[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Eval metrics under `dirs` (searched recursively: eval jobs' metrics.json and d3llm-lm-eval results files)
    and the job dirs that have no metrics (failed, with the reason from their error.txt when they wrote one)."""
    runs, failed = [], []
    for root in map(Path, dirs):
        if not root.exists():
            failed.append(f"{root} (missing)")
            continue
        # A job dir is a Hydra job (.hydra/) or any dir holding a metrics.json (e.g. stage=pipeline's sweeps) or
        # an error.txt (a failed job).
        jobs = {p.parent for name in (".hydra", "metrics.json", "error.txt") for p in root.rglob(name)}
        for results in sorted(root.rglob("results_*.json")):  # d3llm-lm-eval --output_path files
            found, bad = lmeval_runs(results)
            runs.extend(found)
            failed.extend(bad)
        for job in sorted(jobs):
            metrics = job / "metrics.json"
            if not metrics.is_file():
                failed.append(_failure(job))
                continue
            data = json.loads(metrics.read_text())
            if data.get("stage") == "eval":
                runs.append({**data, "run_dir": str(job)})
    return runs, failed


def curve_label(run: dict[str, Any]) -> tuple[str, str]:
    decoder = run["decoder"]
    return run["model"]["name"], decoder.get("name", decoder.get("rule", "?"))


def task_of(run: dict[str, Any]) -> str:
    return str((run.get("task") or {}).get("name", "arith"))


def build_report(runs: list[dict[str, Any]], y_max: float | dict[str, float] | None = None) -> dict[str, Any]:
    """AUP per (model, decoder) curve; y_max defaults to the best accuracy of all runs (in percent).

    Runs of several tasks (e.g. `-m task=gsm8k_cot,math`) get curves per task, each against its own task's best
    accuracy, and the task in the curve's model label. `y_max` is one value for every curve, or a value per task
    name (the paper's leaderboard values: suite.y_max); a task it does not name keeps its own best accuracy.
    """
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[(task_of(run), *curve_label(run))].append(run)
    if not grouped:
        return {"y_max": None, "curves": []}
    tasks = sorted({task for task, _, _ in grouped})
    best = {t: max(100.0 * run["accuracy"] for run in runs if task_of(run) == t) for t in tasks}
    curves = []
    for (task, model, decoder), members in sorted(grouped.items()):
        task_y_max = (y_max.get(task, best[task]) if isinstance(y_max, dict) else best[task] if y_max is None
                      else y_max)
        points = sorted((run["tpf"], 100.0 * run["accuracy"], run["decoder"].get("threshold"), run["run_dir"])
                        for run in members)
        # A job that generated nothing (TPF 0, e.g. an untrained model) has no place on a TPF axis; with every
        # method at 0% the area is 0 (W(y) is undefined for y_max = 0).
        pairs = [(tpf, acc) for tpf, acc, _, _ in points if tpf > 0]
        area = aup(pairs, task_y_max) if pairs and task_y_max > 0 else 0.0
        curves.append({
            "model": model if len(tasks) == 1 else f"{task}: {model}", "decoder": decoder, "task": task,
            "aup": area, "y_max": task_y_max, "points_kept": len(kept_points(pairs)) if pairs else 0,
            "points": [{"tpf": t, "accuracy": a, "threshold": th, "run_dir": d} for t, a, th, d in points],
        })
    y_max = max(c["y_max"] for c in curves) if y_max is None or isinstance(y_max, dict) else y_max
    curves.sort(key=lambda c: -c["aup"])
    return {"y_max": y_max, "curves": curves}


def leaderboard_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per curve, best AUP first: model, decoder, aup, best_accuracy (%), max_tpf, points."""
    return [{"model": c["model"], "decoder": c["decoder"], "aup": c["aup"],
             "best_accuracy": max(p["accuracy"] for p in c["points"]),
             "max_tpf": max(p["tpf"] for p in c["points"]), "points": len(c["points"])} for c in report["curves"]]


def leaderboard(report: dict[str, Any]) -> str:
    """A markdown table, best AUP first."""
    lines = ["| model | decoder | AUP | best accuracy | max TPF | points |", "|---|---|---|---|---|---|"]
    for r in leaderboard_rows(report):
        lines.append(f"| {r['model']} | {r['decoder']} | {r['aup']:.1f} | {r['best_accuracy']:.1f}% | "
                     f"{r['max_tpf']:.2f} | {r['points']} |")
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters / CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in report["curves"]:
        xs = [p["tpf"] for p in c["points"]]
        ys = [p["accuracy"] for p in c["points"]]
        aup_text = f"{c['aup']:.0f}" + (f" ± {c['aup_ci']:.0f}" if c.get("aup_ci") is not None else "")
        label = f"{c['model']} / {c['decoder']} (AUP {aup_text})"
        if any(p.get("tpf_ci") is not None for p in c["points"]):  # means over seeds: 95% intervals as bars
            ax.errorbar(xs, ys, xerr=[p.get("tpf_ci") or 0.0 for p in c["points"]],
                        yerr=[p.get("accuracy_ci") or 0.0 for p in c["points"]], marker="o", capsize=2, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("accuracy (%)")
    title = f"Accuracy under parallelism (y_max = {report['y_max']:.1f})"
    seeds = max((c.get("seeds", 1) for c in report["curves"]), default=1)
    ax.set_title(title + (f"\nmeans over {seeds} seeds, 95% intervals" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(out_dir: str | Path, report: dict[str, Any], failed: list[str]) -> list[Path]:
    """aup_points.csv (one row per point), aup.json (AUP per curve, y_max, failed jobs), aup_curve.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points_csv = out_dir / "aup_points.csv"
    tmp = out_dir / ".aup_points.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "decoder", "threshold", "tpf", "accuracy", "run_dir"])
        for c in report["curves"]:
            for p in c["points"]:
                writer.writerow([c["model"], c["decoder"], p["threshold"], p["tpf"], p["accuracy"], p["run_dir"]])
    tmp.replace(points_csv)
    atomic_write_json(out_dir / "aup.json", {**report, "failed_jobs": failed})
    written = [points_csv, out_dir / "aup.json"]
    if report["curves"]:
        plot_curves(report, out_dir / "aup_curve.png")
        written.append(out_dir / "aup_curve.png")
    return written
