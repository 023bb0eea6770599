"""Stage runners: each is `run(cfg) -> dict` of headline metrics, callable from tests without a subprocess.

`run_stage(cfg)` is the guard every stage runs under: a configuration error becomes one line on stderr and
exit code 2; any other failure is logged with the output directory, the logger is always finished, and the
exception propagates (so one failed job in a sweep is visible but never wedges the others).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import ConfigError, PipelineError

log = logging.getLogger(__name__)

# stage name -> "module:function" taking cfg and returning a dict; imported lazily so `stage=eval` never
# imports Lightning.
STAGES = {
    "teacher": "d3llm_pipeline.stages.teacher:run",
    "eval": "d3llm_pipeline.stages.evaluate:run",
    "trajectory": "d3llm_pipeline.stages.trajectory:run",
    "trajectory_merge": "d3llm_pipeline.stages.trajectory:run_merge",
    "trajectory_import": "d3llm_pipeline.stages.trajectory_import:run",
    "distill": "d3llm_pipeline.stages.distill:run",
    "report": "d3llm_pipeline.stages.report:run",
    "pipeline": "d3llm_pipeline.stages.pipeline:run",
    "ablation": "d3llm_pipeline.stages.ablation:run",
}


def output_dir_of(cfg: DictConfig) -> str:
    """The Hydra job's output dir (or cfg.output_dir when a test calls a stage directly)."""
    if cfg.get("output_dir"):
        return str(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def call_stage(cfg: DictConfig) -> dict[str, Any]:
    """Dispatch on `stage.name` without the guard (tests use this to see the stage's own exceptions)."""
    name = cfg.stage.name
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose stage= one of: {', '.join(sorted(STAGES))}")
    module_name, function = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), function)(cfg)


def run_stage(cfg: DictConfig) -> dict[str, Any]:
    name = cfg.stage.name
    try:
        return call_stage(cfg)
    except PipelineError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    except BaseException:
        try:
            where = output_dir_of(cfg)
        except Exception:  # noqa: BLE001 - reporting the failure matters more than the dir
            where = "?"
        log.exception("stage=%s failed; its output dir is %s", name, where)
        raise
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """Always close a wandb run, or the next job of a multirun logs into this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
