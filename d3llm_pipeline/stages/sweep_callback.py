"""Hydra callback: when a multirun ends, turn it into a report in the sweep dir and remember its failed jobs.

Enabled in conf/hydra/default.yaml (hydra.callbacks.sweep_report).
- A sweep of evals: AUP curves (aup_points.csv, aup.json, aup_curve.png), logged to wandb with `logger=wandb`.
- A sweep of `stage=distill` jobs: every student evaluated and ranked (stages/student_sweep.py: students.md,
  students.csv and the same curves).
- Other sweeps (e.g. sharded trajectories) get no report.
A failed job (a job dir without metrics.json; its error.txt says why) is listed in the report and left out of the
curves; once the report is written, a sweep that had failures ends with one summary line and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

def failed_jobs(sweep_dir: str | Path) -> list[str]:
    """The jobs of a sweep that left no metrics.json, with the reason (their error.txt) when known."""
    from d3llm_pipeline.stages.student_sweep import job_error

    jobs = sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra"))
    return [f"{job} ({job_error(job)})" for job in jobs if not (job / "metrics.json").is_file()]


class SweepReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        failed = failed_jobs(sweep_dir)
        try:
            if config.stage.name == "distill":
                from d3llm_pipeline.stages.student_sweep import compare_students

                compare_students(config, sweep_dir)
            else:
                _eval_report(config, sweep_dir)
        except Exception:  # noqa: BLE001 - a report problem must not turn a finished sweep into a failure
            log.exception("could not write the report for %s; the jobs' own outputs are complete", sweep_dir)
        if failed:
            total = len(list(Path(sweep_dir).glob("*/.hydra")))
            sys.stderr.write(f"sweep: {len(failed)} of {total} jobs failed (the report in {sweep_dir} lists them): "
                             f"{'; '.join(failed)}\n")
            sys.exit(1)


def _eval_report(config: DictConfig, sweep_dir: str) -> None:
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
