"""The ablation table (stage=ablation): one row per variant from its τ sweep, deltas against the `full` row.

Pure functions over plain dicts (no Hydra, no wandb), so the numbers can be checked by hand:

    rows = ablation_rows(report, runs, {"full": "reference", "random_masking": "random masks"}, 0.5)
    print(markdown_table(rows, 0.5, report["y_max"]))
    write_csv(rows, "ablation.csv")

`runs` are eval metrics (metrics.json dicts) whose model name is the variant name and `report` is
aggregate.build_report(runs): one curve per variant, all weighted with the same y_max (the best accuracy of
any variant), so their AUPs compare. The accuracy / TPF / tokens/s columns come from the job at the reference τ.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

# (csv column, markdown header, row key); the markdown headers of the reference-τ columns get "@ τ=<x>".
COLUMNS = [
    ("variant", "variant", "variant"),
    ("what_changed", "what changed", "changed"),
    ("accuracy_pct", "accuracy (%)", "accuracy"),
    ("tpf", "TPF", "tpf"),
    ("tokens_per_s", "tokens/s", "tokens_per_s"),
    ("aup", "AUP", "aup"),
    ("delta_tpf_pct", "ΔTPF", "delta_tpf"),
    ("delta_tps_pct", "Δtokens/s", "delta_tps"),
    ("delta_aup_pct", "ΔAUP", "delta_aup"),
]


def reference_job(runs: list[dict[str, Any]], variant: str, threshold: float) -> dict[str, Any] | None:
    """The eval job of `variant` decoded at entropy threshold `threshold` (None if it failed or is missing)."""
    for run in runs:
        tau = run["decoder"].get("threshold")
        if run["model"]["name"] == variant and tau is not None and math.isclose(tau, threshold):
            return run
    return None


def _relative_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def ablation_rows(report: dict[str, Any], runs: list[dict[str, Any]], changes: dict[str, str],
                  reference_threshold: float, reference: str = "full") -> list[dict[str, Any]]:
    """One row per variant of `changes` (variant -> what changed), in its order.

    accuracy is in percent; delta_tpf / delta_tps / delta_aup are relative changes vs the `reference` variant's row, in
    percent (None when that row is missing or a value is unknown).
    """
    aups = {c["model"]: c["aup"] for c in report["curves"]}
    rows = []
    for variant, changed in changes.items():
        job = reference_job(runs, variant, reference_threshold)
        rows.append({
            "variant": variant, "changed": changed,
            "accuracy": None if job is None else 100.0 * job["accuracy"],
            "tpf": None if job is None else job["tpf"],
            "tokens_per_s": None if job is None else job.get("tokens_per_s"),
            "aup": aups.get(variant),
        })
    ref = next((r for r in rows if r["variant"] == reference), None)
    for row in rows:
        row["delta_tpf"] = _relative_pct(row["tpf"], ref and ref["tpf"])
        row["delta_tps"] = _relative_pct(row["tokens_per_s"], ref and ref["tokens_per_s"])
        row["delta_aup"] = _relative_pct(row["aup"], ref and ref["aup"])
    return rows


def signed_pct(value: float | None) -> str:
    """+12.3% / -4.0% (never "-0.0%"), n/a for None."""
    if value is None:
        return "n/a"
    return f"{round(value, 1) + 0.0:+.1f}%"  # + 0.0 turns -0.0 into 0.0


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    formats = {"accuracy": "{:.1f}", "tpf": "{:.2f}", "tokens_per_s": "{:.0f}", "aup": "{:.1f}"}
    if key in ("delta_tpf", "delta_tps", "delta_aup"):
        return signed_pct(value)
    return formats.get(key, "{}").format(value)


def markdown_table(rows: list[dict[str, Any]], reference_threshold: float, y_max: float | None,
                   reference: str = "full") -> str:
    """The table as markdown, followed by one line saying how the columns were measured."""
    at = f" @ τ={reference_threshold:g}"
    headers = [h + (at if key in ("accuracy", "tpf", "tokens_per_s") else "") for _, h, key in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(key, row[key]) for _, _, key in COLUMNS]
        if row["variant"] == reference:
            cells[-3:] = ["(ref)", "(ref)", "(ref)"]
        lines.append("| " + " | ".join(cells) + " |")
    y = "n/a" if y_max is None else f"{y_max:.1f}"
    lines.append("")
    lines.append(f"AUP over each variant's τ sweep with one y_max = {y} (the best accuracy of any variant); "
                 f"ΔTPF, Δtokens/s and ΔAUP are relative to the `{reference}` row (tokens/s is wall-clock, so it "
                 "moves with the machine's load).")
    return "\n".join(lines)


def as_lists(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(csv column names, one list per row): the shape of ablation.csv and of the wandb table."""
    return [column for column, _, _ in COLUMNS], [[row[key] for _, _, key in COLUMNS] for row in rows]


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """ablation.csv: full-precision numbers (empty cell = unknown), written via a temp file + rename."""
    return write_table_csv(*as_lists(rows), path)


def write_table_csv(header: list[str], data: list[list[Any]], path: str | Path) -> Path:
    """A csv of `data` under `header` (None -> empty cell), written via a temp file + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in data])
    tmp.replace(path)
    return path
