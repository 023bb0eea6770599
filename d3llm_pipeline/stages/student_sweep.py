"""The end of a distill sweep (`-m stage=distill ...`): evaluate every student, add the teacher, rank them by AUP.

    python -m d3llm_pipeline -m stage=distill distill.lora.r=4,16 stage.epochs=1
    # -> <sweep dir>/students.md, students.csv, aup.json, aup_points.csv, aup_curve.png

Run by the multirun callback (stages/sweep_callback.py) once every job has finished. Per finished job (its
student in `<artifacts>/students/<job overrides>/`) and per decoder of `stage.compare.decoders`, one eval per τ of
`stage.compare.thresholds` on the test split, composed like `stage=eval` with that job's own overrides (task,
model family, experiment), so each student is scored on the problems it was made for. The teacher gets the same
sweep and its best curve joins the table. Each eval writes into
`<artifacts>/evals/<model fingerprint>/<decoder>-tau<τ>-<request hash>/` and is reused when the same model and
request come again (a rerun of the sweep, whose students are reused too, costs only the report). A failed job (or
a student whose evals fail) gets a row saying why and no curve; the others are still ranked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from d3llm_pipeline import artifacts
from d3llm_pipeline.config.schema import load_section
from d3llm_pipeline.config.stage_schemas import StudentCompareConfig
from d3llm_pipeline.errors import PipelineError
from d3llm_pipeline.fileio import atomic_write_text
from d3llm_pipeline.reporting import student_table
from d3llm_pipeline.reporting.ablation_table import write_table_csv
from d3llm_pipeline.reporting.aggregate import build_report, write_report
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.stages.sweep_report import job_error, log_sweep_report

log = logging.getLogger(__name__)

# Keys the comparison sets itself for each eval; a job's own value for them is dropped.
_SET_HERE = ("stage", "hydra", "logger", "output_dir", "model.path", "model.name", "decode", "decode.threshold")


def sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job of the sweep in job order: {job, overrides, summary (distill metrics.json) or None, error}."""
    jobs = []
    hydra_dirs = sorted(Path(sweep_dir).glob("*/.hydra"), key=lambda p: (not p.parent.name.isdigit(),
                                                                         int(p.parent.name) if p.parent.name.isdigit()
                                                                         else 0, p.parent.name))
    for hydra_dir in hydra_dirs:
        job = hydra_dir.parent
        overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
        metrics = job / "metrics.json"
        summary = json.loads(metrics.read_text()) if metrics.is_file() else None
        if summary is not None and summary.get("stage") != "distill":
            summary = None
        jobs.append({"job": job, "overrides": overrides, "summary": summary,
                     "error": None if summary else job_error(job)})
    return jobs


def eval_base(overrides: list[str]) -> list[str]:
    """A job's overrides minus those the comparison sets itself."""
    kept = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in _SET_HERE or key.split("/", 1)[0] in ("hydra",) or key.startswith(("stage.", "hydra.", "logger.")):
            continue
        kept.append(override)
    return kept


def evaluate_model(base: list[str], model_path: str, decoder: str, tau: float | None,
                   limit: int | None) -> dict[str, Any]:
    """One eval (or its earlier identical result): the metrics.json dict."""
    overrides = [*base, "stage=eval", "logger=none", f"model.path='{model_path}'", f"decode={decoder}"]
    overrides += [f"decode.threshold={tau}"] if tau is not None else []
    overrides += [f"stage.limit={limit}"] if limit is not None else []
    cfg = compose(config_name="config", overrides=overrides)
    model_fp = artifacts.model_fingerprint(model_path)
    request = artifacts.eval_request(cfg, model_fp)
    out = Path(cfg.paths.artifacts_dir) / "evals" / model_fp / f"{decoder}-tau{tau}-{request}"
    if (out / "metrics.json").is_file():
        log.info("compare: reusing the eval in %s", out)
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        with open_dict(cfg):
            cfg.output_dir = str(out)
        metrics = call_stage(cfg)
    return {**metrics, "run_dir": str(out)}


def _sweep(base: list[str], model_path: str, label: str, compare: StudentCompareConfig) -> list[dict[str, Any]]:
    """Every decoder x τ eval of one model, relabelled with `label` (the curve's name)."""
    runs = []
    for decoder in compare.decoders:
        for tau in [None] if decoder == "vanilla" else compare.thresholds:  # vanilla has no threshold
            metrics = evaluate_model(base, model_path, decoder, tau, compare.limit)
            runs.append({**metrics, "model": {**metrics["model"], "name": label}})
    return runs


def _best_curve_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of the decoder whose curve has the highest AUP (the teacher's best curve)."""
    curves = build_report(runs)["curves"]
    if not curves:
        return []
    best = curves[0]["decoder"]
    return [run for run in runs if run["decoder"]["name"] == best]


def compare_students(config: DictConfig, sweep_dir: str | Path) -> dict[str, Any]:
    """Evaluate and rank the students of the distill sweep in `sweep_dir`; write the table and the curves."""
    sweep_dir = Path(sweep_dir)
    compare = load_section(config.stage.compare, StudentCompareConfig, "stage.compare")
    jobs = sweep_jobs(sweep_dir)
    labels = student_table.sweep_labels([job["overrides"] for job in jobs])
    students, runs, teachers = [], [], {}
    for job, label in zip(jobs, labels, strict=True):
        summary = job["summary"]
        student = {"label": label, "dir": summary["out_dir"] if summary else str(job["job"]),
                   "steps": summary and summary.get("steps"), "wall_s": summary and summary.get("wall_s"),
                   "error": job["error"]}
        students.append(student)
        if summary is None or not compare.enabled:
            continue
        base = eval_base(job["overrides"])
        try:
            runs += _sweep(base, str(Path(summary["out_dir"]) / "merged"), label, compare)
        except Exception as err:  # noqa: BLE001 - one student's failed eval must not lose the others' table
            if not isinstance(err, PipelineError):
                log.exception("compare: evaluating %s failed", label)
            student["error"] = f"evaluation failed: {err}".splitlines()[0]
            runs = [run for run in runs if run["model"]["name"] != label]
            continue
        teachers.setdefault(summary["teacher"], base)
    teacher_label = None
    if compare.enabled and compare.teacher:
        for i, (path, base) in enumerate(sorted(teachers.items())):
            label = "teacher" if len(teachers) == 1 else f"teacher {i} ({Path(path).name})"
            teacher_label = teacher_label or label
            runs += _best_curve_runs(_sweep(base, path, label, compare))
            students.append({"label": label, "dir": path, "steps": None, "wall_s": None, "error": None})
    report = build_report(runs)
    failed = [f"{s['dir']} ({s['error']})" for s in students if s["error"]]
    written = write_report(sweep_dir, report, failed)
    rows = student_table.student_rows(report, students, teacher_label)
    table = student_table.markdown_table(rows, report["y_max"])
    atomic_write_text(sweep_dir / "students.md", table + "\n")
    written += [sweep_dir / "students.md", write_table_csv(*student_table.as_lists(rows), sweep_dir / "students.csv")]
    log_sweep_report(config, sweep_dir, report, tables={"students": student_table.as_lists(rows)})
    print(table)
    log.info("distill sweep: %d jobs (%d failed) ranked -> %s", len(jobs), len(failed),
             ", ".join(str(p) for p in written))
    return {"rows": rows, "failed_jobs": failed, "report": [str(p) for p in written]}

