"""`d3llm-lm-eval` results files as eval runs, so stage=report (and a sweep's report) puts lm-eval runs on AUP curves.

    runs, failed = lmeval_runs(Path("out/lmeval/teacher/results_2026-12-07T10-00-00.json"))

lm-eval writes `results_<time>.json` under `--output_path`; our model adds `config.d3llm` to it (lmeval/model.py
get_model_info: curve label, decoder, each task's decode spec, NFE / tokens / TPF per task). Each task of a file
becomes one run in the shape of an eval job's metrics.json: accuracy = the task's metric (a pipeline task's
`metric`, e.g. GSM8K-CoT's flexible_extract; else exact_match, else its first metric), TPF = Σ tokens / Σ NFE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from d3llm_pipeline.config.decode_presets import pipeline_task_of, task_metric


def _metric(lmeval_task: str, scores: dict[str, Any]) -> str | None:
    """The `<metric>,<filter>` key of the task's accuracy in lm-eval's results."""
    pipeline_task = pipeline_task_of(lmeval_task)
    names = [task_metric(pipeline_task)] if pipeline_task else []
    names += ["exact_match", *(k.split(",")[0] for k in scores if "," in k and "_stderr" not in k)]
    for name in names:
        key = next((k for k in scores if k.split(",")[0] == name), None)
        if key is not None and isinstance(scores[key], int | float):
            return key
    return None


def lmeval_runs(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one run per task of results file `path`, why the file or a task gives none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [], [f"{path} (unreadable lm-eval results: {err})"]
    info = (data.get("config") or {}).get("d3llm") if isinstance(data, dict) else None
    if not info:
        return [], [f"{path} (lm-eval results of another model: AUP needs --model d3llm's NFE counts)"]
    runs, failed = [], []
    for task, scores in (data.get("results") or {}).items():
        summary = info["summary"]["by_task"].get(task) or {}
        key = _metric(task, scores)
        if key is None or not summary.get("tpf"):
            failed.append(f"{path} (task {task}: no accuracy metric or no decoded tokens)")
            continue
        spec = info["specs"].get(task, {})
        runs.append({
            "stage": "eval", "source": "lm-eval", "run_dir": str(path), "accuracy": float(scores[key]),
            "metric": key, "tpf": summary["tpf"], "nfe": summary["total_nfe"], "tokens": summary["total_tokens"],
            "model": {"name": info["model"], "family": info.get("family")},
            "decoder": {"name": info["decode"], "rule": spec.get("rule"), "threshold": spec.get("threshold")},
            "task": {"name": pipeline_task_of(task) or task, "lmeval_task": task},
        })
    return runs, failed
