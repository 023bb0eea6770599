"""Stage runners: each is `run(cfg) -> dict` of headline metrics, callable from tests without a subprocess.

`run_stage(cfg)` is the guard every stage runs under. It validates the whole config first (config/validate.py),
then runs the stage; the logger is always finished.
- A single run: a PipelineError (bad config, missing artifact, corrupt file) becomes one `error:` line on stderr
  and exit code 2; any other exception is logged with the output dir and propagates (a traceback: a bug).
- A job of a Hydra multirun never stops the sweep: it writes `error.txt` (the one-line message, or the exception
  type + message; the traceback goes to the job's log), prints the `error:` line and returns normally, so the
  remaining jobs run and the end-of-sweep report lists this one as failed.
- HYDRA_FULL_ERROR=1 or debug=true: every failure propagates with its full traceback (for developers).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import d3llm_pipeline.config  # noqa: F401  (registers the schemas and resolvers a composed config needs)
from d3llm_pipeline.errors import ConfigError, PipelineError
from d3llm_pipeline.runtime import output_dir_of  # noqa: F401  (re-exported: stages import it from here)

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
    "export": "d3llm_pipeline.stages.export:run",
}


def call_stage(cfg: DictConfig) -> dict[str, Any]:
    """Dispatch on `stage.name` without the guard (tests use this to see the stage's own exceptions)."""
    name = cfg.stage.name
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose stage= one of: {', '.join(sorted(STAGES))}")
    from d3llm_pipeline import ownership
    from d3llm_pipeline.stages.checks import precheck, run_dir_of

    precheck(cfg)  # foreign outputs, missing / corrupt inputs, before seconds of importing Lightning
    key, run_dir = run_dir_of(cfg)
    ownership.claim(run_dir, "run", key)  # marked ours: a rerun may write into it again
    module_name, function = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), function)(cfg)


def full_error_requested(cfg: DictConfig | None = None) -> bool:
    """HYDRA_FULL_ERROR=1 (Hydra's own switch) or debug=true: show tracebacks instead of one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or (cfg is not None and cfg.get("debug") is True)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):  # no Hydra app running (tests, steps composed with compose())
        return False


def _record_failure(cfg: DictConfig, message: str) -> None:
    """One `error:` line on stderr (and in the run's log) and, in a multirun job, the same line in
    <job dir>/error.txt."""
    message = " ".join(message.split())  # one line, whatever the exception text held
    log.error("stage=%s failed: %s", cfg.stage.name, message)
    if _in_multirun():
        from d3llm_pipeline.fileio import atomic_write_text

        try:
            atomic_write_text(Path(output_dir_of(cfg)) / "error.txt", message + "\n")
        except OSError:
            log.exception("could not write error.txt for this failed job")
    sys.stderr.write(f"error: {message}\n")


def run_stage(cfg: DictConfig) -> dict[str, Any]:
    name = cfg.stage.name
    debug = full_error_requested(cfg)
    try:
        from d3llm_pipeline.config.validate import validate_config

        validate_config(cfg)
        return call_stage(cfg)
    except PipelineError as err:
        if debug:
            raise
        _record_failure(cfg, str(err))
        if _in_multirun():
            return {"error": str(err)}
        sys.exit(2)
    except Exception as err:  # a bug or an environment problem (KeyboardInterrupt still stops a sweep)
        try:
            where = output_dir_of(cfg)
        except Exception:  # noqa: BLE001 - reporting the failure matters more than the dir
            where = "?"
        log.exception("stage=%s failed; its output dir is %s", name, where)
        if debug or not _in_multirun():
            raise
        _record_failure(cfg, f"{type(err).__name__}: {err} (traceback in the job's log)")
        return {"error": f"{type(err).__name__}: {err}"}
    finally:
        finish_wandb()


def finish_wandb() -> None:
    """Always close a wandb run, or the next job of a multirun logs into this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
