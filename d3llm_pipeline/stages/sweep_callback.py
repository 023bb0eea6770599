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
from omegaconf import DictConfig

from d3llm_pipeline.stages.sweep_report import eval_report, failed_jobs

log = logging.getLogger(__name__)


class SweepReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        failed = failed_jobs(sweep_dir)
        try:
            if config.stage.name == "distill":
                from d3llm_pipeline.stages.student_sweep import compare_students

                compare_students(config, sweep_dir)
            else:
                eval_report(config, sweep_dir)
        except Exception:  # noqa: BLE001 - a report problem must not turn a finished sweep into a failure
            log.exception("could not write the report for %s; the jobs' own outputs are complete", sweep_dir)
        if failed:
            total = len(list(Path(sweep_dir).glob("*/.hydra")))
            sys.stderr.write(f"sweep: {len(failed)} of {total} jobs failed (the report in {sweep_dir} lists them): "
                             f"{'; '.join(failed)}\n")
            sys.exit(1)


