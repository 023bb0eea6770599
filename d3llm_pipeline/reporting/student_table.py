"""The students table of a distill sweep (`-m stage=distill ...`): one row per student and decoder, ranked by AUP.

Pure functions over plain dicts (no Hydra, no wandb):

    labels = sweep_labels([["distill.lora.r=4", "threads=1"], ["distill.lora.r=16", "threads=1"]])
    # -> ["distill.lora.r=4", "distill.lora.r=16"]: only the overrides that tell the jobs apart
    rows = student_rows(report, students, teacher_label="teacher")
    print(markdown_table(rows, report["y_max"]))

`report` is aggregate.build_report over the students' eval jobs (model name = the student's label) plus the
teacher's best curve; `students` are {label, dir, steps, wall_s, error} dicts, one per sweep job (error set when
the job failed: it gets a row saying so and no curve).
"""

from __future__ import annotations

from typing import Any

from d3llm_pipeline.reporting.ablation_table import signed_pct

# (csv column, markdown header, row key)
COLUMNS = [
    ("student", "student (overrides)", "student"),
    ("decoder", "decoder", "decoder"),
    ("aup", "AUP", "aup"),
    ("delta_aup_vs_teacher_pct", "ΔAUP vs teacher", "delta_aup"),
    ("best_accuracy_pct", "best accuracy (%)", "best_accuracy"),
    ("max_tpf", "max TPF", "max_tpf"),
    ("steps", "steps", "steps"),
    ("train_s", "train s", "wall_s"),
    ("status", "status", "status"),
    ("dir", "dir", "dir"),
]


def sweep_labels(overrides: list[list[str]]) -> list[str]:
    """For each job, its overrides that not every job shares (joined by ' '); 'job <i>' when there are none."""
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    labels = []
    for i, job in enumerate(overrides):
        own = [o for o in job if o not in common]
        labels.append(" ".join(own) if own else f"job {i}")
    return labels


def student_rows(report: dict[str, Any], students: list[dict[str, Any]], teacher_label: str | None) -> list[dict]:
    """Rows, best AUP first, teacher included; failed students last. AUP deltas are relative to the teacher."""
    curves = {(c["model"], c["decoder"]): c for c in report["curves"]}
    teacher = next((c for (model, _), c in curves.items() if model == teacher_label), None)
    info = {s["label"]: s for s in students}
    rows = []
    for (model, decoder), curve in curves.items():
        student = info.get(model, {})
        rows.append({
            "student": model, "decoder": decoder, "aup": curve["aup"],
            "delta_aup": None if teacher is None or model == teacher_label or not teacher["aup"]
            else 100.0 * (curve["aup"] - teacher["aup"]) / teacher["aup"],
            "best_accuracy": max(p["accuracy"] for p in curve["points"]),
            "max_tpf": max(p["tpf"] for p in curve["points"]),
            "steps": student.get("steps"), "wall_s": student.get("wall_s"),
            "status": "teacher" if model == teacher_label else "ok", "dir": student.get("dir"),
        })
    rows.sort(key=lambda r: -r["aup"])
    for student in students:
        if student.get("error"):
            rows.append({"student": student["label"], "decoder": None, "aup": None, "delta_aup": None,
                         "best_accuracy": None, "max_tpf": None, "steps": None, "wall_s": None,
                         "status": f"failed: {student['error']}", "dir": student.get("dir")})
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a" if key not in ("status", "dir", "decoder") else ""
    if key == "delta_aup":
        return signed_pct(value)
    formats = {"aup": "{:.1f}", "best_accuracy": "{:.1f}", "max_tpf": "{:.2f}", "wall_s": "{:.0f}"}
    return formats.get(key, "{}").format(value)


def markdown_table(rows: list[dict[str, Any]], y_max: float | None) -> str:
    """The table as markdown, followed by one line saying how AUP was weighted."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row[key]).replace("|", "\\|") for _, _, key in COLUMNS) + " |")
    y = "n/a" if y_max is None else f"{y_max:.1f}"
    lines += ["", f"AUP over each curve's τ sweep with one y_max = {y} (the best accuracy of any curve); ΔAUP is "
              "relative to the teacher's best curve."]
    return "\n".join(lines)


def as_lists(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(csv column names, one list per row): the shape of students.csv and of the wandb table."""
    return [column for column, _, _ in COLUMNS], [[row[key] for _, _, key in COLUMNS] for row in rows]
