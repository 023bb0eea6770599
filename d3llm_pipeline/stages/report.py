"""stage=report: AUP curves + leaderboard over any set of eval run / sweep dirs (made separately or together).

    python -m d3llm_pipeline stage=report 'stage.runs=[outputs/multirun/eval/2026-11-23_18-45-15,outputs/multirun/eval/2026-11-23_19-00-01]'

Writes aup_points.csv, aup.json and aup_curve.png into its own output dir and prints the leaderboard; with
`logger=wandb` it also logs the curves and the leaderboard as wandb tables plus a plot (reporting/wandb_report.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import load_section
from d3llm_pipeline.config.stage_schemas import ReportStageConfig
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report
from d3llm_pipeline.reporting.wandb_report import log_report
from d3llm_pipeline.stages import output_dir_of

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, ReportStageConfig, "stage")
    runs, failed = collect_runs(stage.runs)
    if not runs:
        raise ConfigError(f"stage.runs={stage.runs} holds no finished eval jobs (metrics.json with stage=eval); "
                          "point it at eval run or sweep dirs")
    report = build_report(runs, y_max=stage.y_max)
    out_dir = Path(output_dir_of(cfg))
    written = write_report(out_dir, report, failed)
    table = leaderboard(report)
    log_report(cfg, report)
    print(table)
    log.info("report over %d eval jobs (%d failed/missing) -> %s", len(runs), len(failed),
             ", ".join(str(p) for p in written))
    return {"stage": "report", "y_max": report["y_max"], "failed_jobs": failed,
            "aup": {f"{c['model']}/{c['decoder']}": c["aup"] for c in report["curves"]}}
