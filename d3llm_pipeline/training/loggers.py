"""Logger glue: `logger=csv|wandb|none` for Lightning stages, and a plain wandb run for non-Lightning stages.

wandb runs use project=d3llm-pipeline (logger.entity: your team), group=<experiment_name> (a sweep's or a pipeline's
own, conf/logger/wandb.yaml), job_type=<stage>, a name that says experiment / stage / what varies (run_name), log the
resolved config and git SHA, and are offline unless WANDB_MODE=online. The run id is written into the output dir
(wandb_run_id.txt) so a resumed stage continues the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.runtime import git_sha, launcher_rank, output_dir_of

LOGGERS = ("csv", "wandb", "none")


def run_name(cfg: DictConfig, job_type: str) -> str:
    """logger.run_name, else '<experiment>/<job type>', plus a multirun job's swept overrides
    ('default/eval decode.threshold=0.5'). stage=pipeline / ablation name their steps themselves (steps.py)."""
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    name = f"{cfg.get('experiment_name', 'default')}/{job_type}"
    from d3llm_pipeline.config import running_multirun, swept_keys

    hydra_cfg = running_multirun()
    if hydra_cfg is not None:
        swept = swept_keys(hydra_cfg.sweep.dir) or set()
        varied = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").split("=", 1)[0] in swept]
        name += (" " + " ".join(varied)) if varied else ""
    return name


def _wandb_settings(cfg: DictConfig, job_type: str) -> dict[str, Any]:
    out_dir = Path(output_dir_of(cfg))
    id_file = out_dir / "wandb_run_id.txt"
    config = OmegaConf.to_container(cfg, resolve=True)
    config["git_sha"] = git_sha()
    settings = {
        "project": cfg.logger.get("project", "d3llm-pipeline"),
        "entity": cfg.logger.get("entity"),
        "name": run_name(cfg, job_type),
        "group": str(cfg.logger.get("group", "default")),
        "job_type": job_type,
        "tags": list(cfg.logger.get("tags", [])),
        "config": config,
        "dir": str(out_dir),
        "mode": cfg.logger.get("mode", "offline"),
    }
    if id_file.is_file():
        settings.update(id=id_file.read_text().strip(), resume="allow")
    return settings


def _remember_run_id(cfg: DictConfig, run_id: str) -> None:
    path = Path(output_dir_of(cfg)) / "wandb_run_id.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")


def init_wandb_run(cfg: DictConfig, job_type: str):
    """A wandb run for a stage that is not a Lightning fit (eval, report)."""
    import wandb

    run = wandb.init(**_wandb_settings(cfg, job_type))
    _remember_run_id(cfg, run.id)
    return run


def make_lightning_logger(cfg: DictConfig, job_type: str):
    """The Lightning logger chosen by `logger.name` (False disables logging)."""
    name = cfg.logger.name
    if name not in LOGGERS:
        raise ConfigError(f"logger must be one of {', '.join(LOGGERS)}, got {name!r}")
    out_dir = output_dir_of(cfg)
    if name == "none":
        return False
    if name == "csv":
        return _csv_logger(Path(out_dir) / "csv")
    from lightning.pytorch.loggers import WandbLogger

    settings = _wandb_settings(cfg, job_type)
    mode = settings.pop("mode")
    logger = WandbLogger(offline=mode != "online", save_dir=settings.pop("dir"), **settings)
    _remember_run_id(cfg, logger.experiment.id)
    return logger


def _csv_logger(log_dir: Path):
    """Lightning's CSVLogger into `log_dir`, keeping what a run there logged before: a resumed stage (an ablation's
    or a pipeline's student, same run dir) would otherwise start by deleting the metrics.csv of its first part
    (Lightning warns, then removes it). That file moves to metrics_part<k>.csv; the new one holds the steps from
    the resume on."""
    import warnings

    from lightning.pytorch.loggers import CSVLogger

    old = log_dir / "metrics.csv"
    if old.is_file() and launcher_rank() == 0:  # a re-launched ddp rank logs nothing (and must not race rank 0)
        k = 1 + sum(1 for _ in log_dir.glob("metrics_part*.csv"))
        old.rename(log_dir / f"metrics_part{k}.csv")
        logging.getLogger(__name__).info("%s of an earlier run here kept as metrics_part%d.csv", old, k)
    logger = CSVLogger(save_dir=str(log_dir.parent), name=log_dir.name, version="")
    with warnings.catch_warnings():  # its "will be deleted" warning no longer holds: nothing is deleted
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        logger.experiment  # noqa: B018 -- made here (Lightning makes it at the first log), inside the filter
    return logger

