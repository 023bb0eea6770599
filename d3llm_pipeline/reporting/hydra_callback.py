"""Hydra callback: when a multirun ends, turn its eval jobs into AUP curves in the sweep dir.

Enabled in conf/hydra/default.yaml (hydra.callbacks.aup_report). Sweeps that are not evals (e.g. sharded
trajectories) are left alone; a failed job is listed in aup.json and left out of the curves. With
`logger=wandb` the report is also logged to wandb (reporting/wandb_report.py), a run of its own in the sweep dir.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class AUPReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report

        sweep_dir = config.hydra.sweep.dir
        runs, failed = collect_runs([sweep_dir])
        if not runs:
            return
        try:
            report = build_report(runs)
            written = write_report(sweep_dir, report, failed)
        except Exception:  # noqa: BLE001 - a report problem must not turn a finished sweep into a failure
            log.exception("could not write the AUP report for %s; rerun it with stage=report", sweep_dir)
            return
        log.info("AUP report for %d eval jobs (%d failed) -> %s\n%s", len(runs), len(failed),
                 ", ".join(str(p) for p in written), leaderboard(report))
        if config.get("logger", {}).get("name") == "wandb":
            _log_to_wandb(config, sweep_dir, report)


def _log_to_wandb(config: DictConfig, sweep_dir: str, report: dict[str, Any]) -> None:
    from d3llm_pipeline.reporting.wandb_report import log_report

    # The job config without the hydra node (its ${now:}/${hydra:} values do not resolve after the sweep),
    # pointed at the sweep dir, which is where the report run lives.
    job_cfg = OmegaConf.create({k: v for k, v in OmegaConf.to_container(config).items() if k != "hydra"})
    with open_dict(job_cfg):
        job_cfg.output_dir = str(sweep_dir)
    try:
        log_report(job_cfg, report)
    except Exception:  # noqa: BLE001 - the files are written; a wandb problem must not fail the sweep
        log.exception("could not log the AUP report of %s to wandb; the files in it are complete", sweep_dir)
