"""The ablation table (stage=ablation): one row per variant from its τ sweep, deltas against the `full` row.

Pure functions over plain dicts (no Hydra, no wandb), so the numbers can be checked by hand:

    rows = ablation_rows(report, runs, {"full": "reference", "random_masking": "random masks"}, 0.5, seeds=[0, 1, 2])
    print(markdown_table(rows, 0.5, report["y_max"]))
    write_csv(rows, "ablation.csv")

`runs` are eval metrics (metrics.json dicts) whose model name is the curve label (`variant_label`: the variant,
or `<variant>@seed<s>` with several training seeds) and `report` is aggregate.build_report(runs): one curve per
(variant, seed), all weighted with the same y_max (the best accuracy of any), so their AUPs compare. The accuracy /
TPF / tokens/s columns come from the job at the reference τ; with several seeds each value is a mean ± 95% CI and
each Δ a paired (per-seed) mean ± CI whose sign is called only when the interval excludes 0. With a `control`
curve (the teacher decoded like `full`, no distillation: the pipeline's teacher/d3llm curve) the table gains its
row and an `AUP ÷ control` column: each seed's AUP over the control's, mean ± CI.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from d3llm_pipeline.reporting.intervals import mean_ci, sign_of

# (csv column, markdown header, row key); the markdown headers of the reference-τ columns get "@ τ=<x>".
COLUMNS = [
    ("variant", "variant", "variant"),
    ("what_changed", "what changed", "changed"),
    ("seeds", "seeds", "seeds"),
    ("accuracy_pct", "accuracy (%)", "accuracy"),
    ("tpf", "TPF", "tpf"),
    ("tokens_per_s", "tokens/s", "tokens_per_s"),
    ("aup", "AUP", "aup"),
    ("aup_vs_control", "AUP ÷ control", "vs_control"),
    ("delta_tpf_pct", "ΔTPF", "delta_tpf"),
    ("delta_tps_pct", "Δtokens/s", "delta_tps"),
    ("delta_aup_pct", "ΔAUP", "delta_aup"),
    ("paper", "paper: the component's gain (method.md §11)", "paper"),
]
CI_KEYS = ("accuracy", "tpf", "tokens_per_s", "aup", "vs_control", "delta_tpf", "delta_tps", "delta_aup")  # ± 95% CI
SIGN_KEYS = ("delta_tpf", "delta_tps", "delta_aup")
# What the paper reports for the component a variant removes (or, kv_cache, adds): method.md §11, README / blog.
PAPER = {
    "random_masking": "pseudo-trajectory masks: +18% TPF (README), +15% (blog)",
    "no_mask_ratio_curriculum": "progressive noise: +12% TPF (README), +18% (blog)",
    "no_window_curriculum": "progressive window 16->32: +8% TPF",
    "no_complementary_loss": "not reported",
    "no_entropy_loss": "not reported",
    "single_block": "multi-block decoding: +30% TPF (README), +20% (blog)",
    "kv_cache": "KV cache + refresh: +35% TPS (README), +20% (blog), long contexts",
    "no_early_stop": "early stop on EOS: +5% TPF",
    # no paper figure is the teacher with d3LLM's decoder; the nearest is the teacher with threshold decoding
    "control": "distillation: 3.1x (LLaDA), 3.4x (Dream) the AUP of Fast-dLLM on GSM8K-CoT (method.md §8.1)",
}
CONTROL = "control"  # the control curve's label and row: the teacher, decoded as the `full` row is
CONTROL_CHANGE = "the teacher, no distillation, decoded as `full` (the pipeline's teacher/d3llm control)"


def variant_label(variant: str, seed: int, n_seeds: int) -> str:
    """The curve name of one (variant, seed): the variant alone when there is one seed."""
    return variant if n_seeds == 1 else f"{variant}@seed{seed}"


def reference_job(runs: list[dict[str, Any]], label: str, threshold: float) -> dict[str, Any] | None:
    """The eval job of curve `label` decoded at entropy threshold `threshold` (None if it failed or is missing)."""
    for run in runs:
        tau = run["decoder"].get("threshold")
        if run["model"]["name"] == label and tau is not None and math.isclose(tau, threshold):
            return run
    return None


def _relative_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def _values(report: dict[str, Any], runs: list[dict[str, Any]], label: str, threshold: float
            ) -> dict[str, float | None]:
    """Curve `label`'s accuracy (%), TPF and tokens/s at τ `threshold` and its AUP (None: unknown)."""
    job = reference_job(runs, label, threshold)
    return {"accuracy": None if job is None else 100.0 * job["accuracy"], "tpf": None if job is None else job["tpf"],
            "tokens_per_s": None if job is None else job.get("tokens_per_s"),
            "aup": next((c["aup"] for c in report["curves"] if c["model"] == label), None)}


def _per_seed(report: dict[str, Any], runs: list[dict[str, Any]], variant: str, seeds: list[int],
              threshold: float) -> dict[int, dict[str, float | None]]:
    """Per seed, the values of `variant`'s curve; the control has one curve, the same for every seed."""
    if variant == CONTROL:
        values = _values(report, runs, CONTROL, threshold)
        return dict.fromkeys(seeds, values)
    return {seed: _values(report, runs, variant_label(variant, seed, len(seeds)), threshold) for seed in seeds}


def ablation_rows(report: dict[str, Any], runs: list[dict[str, Any]], changes: dict[str, str],
                  reference_threshold: float, reference: str = "full", seeds: list[int] | None = None
                  ) -> list[dict[str, Any]]:
    """One row per variant of `changes` (variant -> what changed), in its order, over `seeds` (default [0]), and
    last the `control` row when the report has a curve labelled CONTROL.

    Each value is the mean over the seeds that have it, with `<key>_ci` the half-width of its 95% interval (None
    with one seed). accuracy is in percent; delta_tpf / delta_tps / delta_aup are relative changes vs the
    `reference` variant's SAME seed, in percent, averaged over seeds (paired), with `<key>_sign` the sign the
    interval supports ("+", "-", "n.s.", or "n/a" with fewer than two seeds). vs_control: each seed's AUP over
    the control's (None without a control), mean ± CI; the control's own row has 1 and deltas paired with each
    seed of `reference`.
    """
    seeds = seeds or [0]
    if any(c["model"] == CONTROL for c in report["curves"]):
        changes = {**changes, CONTROL: CONTROL_CHANGE}
    values = {v: _per_seed(report, runs, v, seeds, reference_threshold) for v in changes}
    control_aup = values[CONTROL][seeds[0]]["aup"] if CONTROL in values else None
    ref = values.get(reference, {})
    rows = []
    for variant, changed in changes.items():
        row: dict[str, Any] = {"variant": variant, "changed": changed, "paper": PAPER.get(variant, "")}
        per_seed = values[variant]
        for key in ("accuracy", "tpf", "tokens_per_s", "aup"):
            row[key], row[f"{key}_ci"] = mean_ci([v[key] for v in per_seed.values() if v[key] is not None])
        for key, base in (("delta_tpf", "tpf"), ("delta_tps", "tokens_per_s"), ("delta_aup", "aup")):
            deltas = [_relative_pct(per_seed[s][base], ref.get(s, {}).get(base)) for s in seeds]
            row[key], row[f"{key}_ci"] = mean_ci([d for d in deltas if d is not None])
            row[f"{key}_sign"] = sign_of(row[key], row[f"{key}_ci"])
        ratios = [v["aup"] / control_aup for v in per_seed.values() if v["aup"] is not None and control_aup]
        row["vs_control"], row["vs_control_ci"] = mean_ci(ratios)
        row["seeds"] = sum(1 for v in per_seed.values() if v["aup"] is not None)
        if variant == CONTROL:  # one curve (no training seed): its own values carry no interval
            row.update(seeds=1, **{f"{key}_ci": None for key in ("accuracy", "tpf", "tokens_per_s", "aup",
                                                                 "vs_control")})
        rows.append(row)
    return rows


def seed_mean_report(report: dict[str, Any], variants: list[str], seeds: list[int]) -> dict[str, Any]:
    """One curve per (variant, decoder) from its seeds' curves: at each τ the mean TPF and accuracy over the seeds
    that decoded it (`tpf_ci` / `accuracy_ci`: 95% half-widths), AUP the mean of the seeds' AUPs (`aup_ci`). The
    per-seed report keeps the raw curves; this one is for reading (aggregate.plot_curves draws the intervals)."""
    by_label = {c["model"]: c for c in report["curves"]}
    curves = []
    for variant in variants:
        members = [by_label[label] for label in (variant_label(variant, s, len(seeds)) for s in seeds)
                   if label in by_label]
        for decoder in sorted({c["decoder"] for c in members}):
            same = [c for c in members if c["decoder"] == decoder]
            taus = sorted({p["threshold"] for c in same for p in c["points"]}, key=lambda t: (t is None, t))
            points = []
            for tau in taus:
                at = [p for c in same for p in c["points"] if p["threshold"] == tau]
                tpf, tpf_ci = mean_ci([p["tpf"] for p in at])
                acc, acc_ci = mean_ci([p["accuracy"] for p in at])
                points.append({"tpf": tpf, "accuracy": acc, "threshold": tau, "tpf_ci": tpf_ci,
                               "accuracy_ci": acc_ci, "seeds": len(at)})
            aup_mean, aup_ci = mean_ci([c["aup"] for c in same])
            curves.append({"model": variant, "decoder": decoder, "aup": aup_mean, "aup_ci": aup_ci,
                           "seeds": len(same), "points": sorted(points, key=lambda p: p["tpf"])})
    curves += [{**c, "aup_ci": None, "seeds": 1} for c in report["curves"] if c["model"] == CONTROL]
    curves.sort(key=lambda c: -c["aup"])
    return {"y_max": report["y_max"], "curves": curves}


def signed_pct(value: float | None) -> str:
    """+12.3% / -4.0% (never "-0.0%"), n/a for None."""
    if value is None:
        return "n/a"
    return f"{round(value, 1) + 0.0:+.1f}%"  # + 0.0 turns -0.0 into 0.0


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if value is None:
        return "n/a"
    if key in SIGN_KEYS:
        text = signed_pct(value)
        if row.get(f"{key}_ci") is not None:
            text += f" ± {row[f'{key}_ci']:.1f} ({row[f'{key}_sign']})"
        return text
    formats = {"accuracy": "{:.1f}", "tpf": "{:.2f}", "tokens_per_s": "{:.0f}", "aup": "{:.1f}",
               "vs_control": "{:.2f}"}
    text = formats.get(key, "{}").format(value)
    if key in CI_KEYS and row.get(f"{key}_ci") is not None:
        text += " ± " + formats[key].format(row[f"{key}_ci"])
    return text


def markdown_table(rows: list[dict[str, Any]], reference_threshold: float, y_max: float | None,
                   reference: str = "full") -> str:
    """The table as markdown, followed by lines saying how the columns were measured."""
    at = f" @ τ={reference_threshold:g}"
    controlled = any(row["variant"] == CONTROL for row in rows)  # the ÷ control column only when it has values
    columns = [c for c in COLUMNS if controlled or c[2] != "vs_control"]
    headers = [h + (at if key in ("accuracy", "tpf", "tokens_per_s") else "") for _, h, key in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(key, row) for _, _, key in columns]
        if row["variant"] == reference:
            cells[-4:-1] = ["(ref)", "(ref)", "(ref)"]
        lines.append("| " + " | ".join(cells) + " |")
    y = "n/a" if y_max is None else f"{y_max:.1f}"
    seeds = max((row["seeds"] for row in rows), default=0)
    lines.append("")
    lines.append(f"AUP over each variant's τ sweep with one y_max = {y} (the best accuracy of any curve); "
                 f"ΔTPF, Δtokens/s and ΔAUP are relative to the `{reference}` row (tokens/s is wall-clock, so it "
                 "moves with the machine's load).")
    if seeds > 1:
        lines.append(f"Values are means over {seeds} training seeds ± the half-width of their 95% confidence interval "
                     "(Student's t); a Δ is paired by seed, and its sign is called (+ / -) only when its interval "
                     "excludes 0 (n.s. otherwise). The paper column is the gain the paper reports for the component "
                     "the variant removes, so a removal that matches it shows a negative Δ.")
    if controlled:
        lines.append("The `control` row is the teacher decoded as `full` is, without distillation (stage=pipeline's "
                     "teacher/d3llm curve); AUP ÷ control is each seed's AUP over the control's, and the control's "
                     "Δ columns say how far below `full` the teacher is.")
    return "\n".join(lines)


def csv_columns() -> list[tuple[str, str]]:
    """(csv column, row key): every table column, each mean followed by its CI half-width and Δ sign."""
    out = []
    for column, _, key in COLUMNS:
        out.append((column, key))
        if key in CI_KEYS:
            out.append((f"{column}_ci95", f"{key}_ci"))
        if key in SIGN_KEYS:
            out.append((f"{column}_sign", f"{key}_sign"))
    return out


def as_lists(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(csv column names, one list per row): the shape of ablation.csv and of the wandb table."""
    columns = csv_columns()
    return [column for column, _ in columns], [[row.get(key) for _, key in columns] for row in rows]


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
