"""What the end of a multirun writes and logs, shared by the sweep callback (sweep_callback.py) and the distill
sweep's student comparison (student_sweep.py): failed jobs and why, the AUP report of an eval sweep, wandb.

    failed = failed_jobs(sweep_dir)         # ["<job dir> (<its error line>)", ...]
    eval_report(config, sweep_dir)           # aup_points.csv, aup.json, aup_curve.png in the sweep dir
    log_sweep_report(config, sweep_dir, report, tables={...})   # logger=wandb: one run in the sweep's group
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def job_error(job: Path) -> str:
    """Why a job left no metrics.json: the first line of its error.txt, else a pointer to its log."""
    error_file = job / "error.txt"
    if error_file.is_file():
        lines = error_file.read_text().strip().splitlines()
        if lines:
            return lines[0].removeprefix("error: ")
    return f"no metrics.json (crashed or interrupted; see the log in {job})"


def failed_jobs(sweep_dir: str | Path) -> list[str]:
    """The jobs of a sweep that left no metrics.json, with the reason (their error.txt) when known."""
    jobs = sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra"))
    return [f"{job} ({job_error(job)})" for job in jobs if not (job / "metrics.json").is_file()]


def eval_report(config: DictConfig, sweep_dir: str) -> None:
    from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report

    runs, failed = collect_runs([sweep_dir])
    if not runs:
        return
    report = build_report(runs)
    written = write_report(sweep_dir, report, failed)
    log.info("AUP report for %d eval jobs (%d failed) -> %s\n%s", len(runs), len(failed),
             ", ".join(str(p) for p in written), leaderboard(report))
    log_sweep_report(config, sweep_dir, report)


def log_sweep_report(config: DictConfig, sweep_dir: str | Path, report: dict[str, Any],
                     tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None) -> None:
    """With `logger=wandb`: the report (and extra tables) as one wandb run in the sweep dir, in the sweep's group."""
    if config.get("logger", {}).get("name") != "wandb":
        return
    from d3llm_pipeline.config import sweep_group
    from d3llm_pipeline.reporting.wandb_report import log_report

    # The job config without the hydra node (its ${now:}/${hydra:} values do not resolve after the sweep),
    # pointed at the sweep dir, which is where the report run lives, and grouped with the sweep's jobs.
    job_cfg = OmegaConf.create({k: v for k, v in OmegaConf.to_container(config).items() if k != "hydra"})
    with open_dict(job_cfg):
        job_cfg.output_dir = str(sweep_dir)
        job_cfg.logger.group = sweep_group(str(config.experiment_name), str(sweep_dir))
    try:
        log_report(job_cfg, report, tables=tables)
    except Exception:  # noqa: BLE001 - the files are written; a wandb problem must not fail the sweep
        log.exception("could not log the AUP report of %s to wandb; the files in it are complete", sweep_dir)
