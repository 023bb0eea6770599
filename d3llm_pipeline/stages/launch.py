"""The steps of stage=pipeline / stage=ablation as jobs of the run's Hydra launcher (a cluster, or local processes).

    python -m d3llm_pipeline stage=pipeline experiment=d3llm_llada hydra/launcher=slurm \\
        hydra.launcher.partition=gpu trainer=ddp trainer.devices=8          # each step: Slurm job(s)
    python -m d3llm_pipeline stage=pipeline hydra/launcher=submitit_local  # each step: a local subprocess

With Hydra's default (basic) launcher every step runs in this process, one after the other (stages/steps.py). With
any other launcher, each batch of steps that may run at once (the trajectory step; the distillation steps; all
eval jobs of the sweeps) is handed to it as one multirun: the jobs run in parallel where the launcher allows (a
Slurm job array: one GPU per eval job), and this process waits for the batch. Each job is the step's own command
line (the same overrides as in process), writing into its step dir, with its Hydra log and `.hydra/` there.

Resources: eval and trajectory jobs get the launcher's settings as given (conf/hydra/launcher/slurm.yaml: one GPU;
joblib: `device=${job_device:}` spreads them over a node's GPUs). Distillations under joblib run in this process
(`launched`), on all the node's devices.
A distillation job on Slurm gets `trainer.num_nodes` nodes with one task per device (`trainer.devices`), each task
one rank (Lightning's SLURM environment; `strategy: ddp_spawn` becomes `ddp`, since Slurm starts the ranks).

Preemption and failures: a job that is killed, preempted or times out leaves its resume point (trajectory chunks,
the Lightning checkpoint); Slurm jobs are requeued by submitit (`hydra.launcher.max_num_timeout`) and resume there
with no flag. If a batch still ends with an unfinished job this stage stops with one `error:` line; rerunning the
same command reuses every finished step and resumes the unfinished one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.errors import PipelineError, first_line

log = logging.getLogger(__name__)

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the package's link to the top-level conf/


def external_launcher() -> str | None:
    """The `_target_` of the running app's launcher when steps should go through it: a run (not a job of a
    multirun, whose steps stay in its own process) started with a launcher other than Hydra's basic one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # no Hydra app running (tests composing configs, steps run in process)
        return None
    target = str(hydra_cfg.launcher.get("_target_", BASIC_LAUNCHER))
    return None if hydra_cfg.mode == RunMode.MULTIRUN or target == BASIC_LAUNCHER else target


def launched(kind: str, target: str | None) -> bool:
    """Whether a batch of `kind` steps goes through launcher `target` (None: no external launcher). Distillations
    under joblib (hydra/launcher=local, one machine) run in this process instead: joblib's loky workers cannot start
    Lightning's DDP ranks ("cannot find context for 'loky'"), and on one node a distillation takes every GPU anyway."""
    return target is not None and not (kind == "distill" and target == JOBLIB_LAUNCHER)


def distill_resources(cfg: DictConfig, target: str) -> tuple[list[str], list[str]]:
    """(launcher overrides, step overrides) for a distillation job: on Slurm, trainer.num_nodes nodes with one task
    (rank) and one GPU per device, and Lightning's `ddp` in place of `ddp_spawn` (Slurm starts the ranks)."""
    if target != SLURM_LAUNCHER:
        return [], []  # local processes: Lightning starts its own ranks inside the one job
    devices, nodes = int(cfg.trainer.get("devices", 1)), int(cfg.trainer.get("num_nodes", 1))
    launcher = [f"hydra.launcher.nodes={nodes}", f"hydra.launcher.tasks_per_node={devices}"]
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda"):
        launcher.append(f"hydra.launcher.gpus_per_node={devices}")
    step = ["trainer.strategy=ddp"] if devices * nodes > 1 and cfg.trainer.get("strategy") == "ddp_spawn" else []
    return launcher, step


def launched_step(cfg: DictConfig) -> dict[str, Any]:
    """The task function of every launched job: the step's stage under the CLI's guard (a failure is recorded in
    the job's error.txt and returned as {"error": ...}, stages/__init__.py run_stage)."""
    from d3llm_pipeline.stages import run_stage

    return run_stage(cfg)


def launch_steps(jobs: list[tuple[Path, list[str]]], root: Path, launcher_overrides: list[str] = ()) -> list[dict]:
    """Run `jobs` ((step dir, the step's full override list) each) as one multirun of the app's launcher, its
    submission files under `root`; wait for all; their results in order. Raises PipelineError naming every job
    that failed or did not finish."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    hydra_cfg = HydraConfig.get()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    # the launcher as the command line chose it (hydra/launcher=..., hydra.launcher.*), the batch's resources, and
    # its submission dir (submitit: <root>/.submitit/<job id>: each job's stdout / stderr)
    master = loader.load_configuration(
        config_name=str(hydra_cfg.job.config_name or "config"), run_mode=RunMode.MULTIRUN,
        overrides=[*hydra_cfg.overrides.hydra, *launcher_overrides, f"hydra.sweep.dir={root}"])
    context = HydraContext(config_loader=loader, callbacks=Callbacks())
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=launched_step,
                                                      config=master)
    # each job's Hydra output dir is its step dir (hydra.sweep.dir / subdir), where the step writes anyway
    job_overrides = [[*overrides, f"hydra.sweep.dir={step_dir.parent}", f"hydra.sweep.subdir={step_dir.name}"]
                     for step_dir, overrides in jobs]
    name = str(hydra_cfg.runtime.choices.get("hydra/launcher", launcher.__class__.__name__))
    log.info("launching %d job(s) with hydra/launcher=%s: %s", len(jobs), name,
             ", ".join(str(step_dir) for step_dir, _ in jobs[:4]) + (" ..." if len(jobs) > 4 else ""))
    try:
        returns = launcher.launch(job_overrides, initial_job_idx=0)
    except Exception as err:  # a job killed, preempted past its requeues, or lost: no result came back
        raise PipelineError(
            f"{len(jobs)} job(s) under hydra/launcher={name} did not all finish ({type(err).__name__}: "
            f"{first_line(err)}); rerun the same command: finished steps are reused, unfinished ones resume "
            f"(job logs: {root / '.submitit'} or each step dir)") from err
    results, failed = [], []
    for (step_dir, _), ret in zip(jobs, returns, strict=True):
        value = ret._return_value if ret.status == JobStatus.FAILED else ret.return_value
        if ret.status == JobStatus.FAILED or (isinstance(value, dict) and "error" in value):
            message = value["error"] if isinstance(value, dict) else f"{type(value).__name__}: {first_line(value)}"
            failed.append(f"{step_dir}: {message}")
        results.append(value)
    if failed:
        raise PipelineError(f"{len(failed)} of {len(jobs)} launched job(s) failed: " + "; ".join(failed))
    return results
