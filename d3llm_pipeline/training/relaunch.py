"""Lightning's ddp / fsdp launcher inside a Hydra multirun: re-launch this sweep job only, not the whole sweep.

`strategy: fsdp` (and `ddp`) re-run the command line once per extra device. Lightning rebuilds that command from
sys.argv, which under `python -m d3llm_pipeline -m ...` is the whole sweep (`-m` and its value lists): every extra
process then runs every job of the sweep itself. Seen on CPU FSDP processes with a 2-job distill sweep: the child
launched its own multirun (a stray sweep dir with an empty report) and the two processes met job by job only by
luck. While `isolated_sweep_job()` is active, the extra processes run exactly this job: its own overrides, its
output dir, no `-m`. And at its end the job leaves no launcher state behind: Hydra's local launcher runs the next
job in this same process, and Lightning, finding the LOCAL_RANK / WORLD_SIZE / MASTER_* variables its launcher
set, would take the processes for externally launched, spawn none and join the finished job's process group (its
peers gone: the first collective fails). So those variables are put back and the job's process group is closed.
Each job also rendezvous on a fresh MASTER_PORT: torch keeps a port's store server alive in this process with the
finished job's keys, so a MASTER_PORT set before the sweep (found: leaked from an earlier in-process test) sent the
second job's processes to stale peer addresses.

    with isolated_sweep_job():
        trainer.fit(module, datamodule=data)

Outside a multirun (a single run, or no Hydra) it changes nothing: Lightning's own command is right there.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_LAUNCHER = "lightning.pytorch.strategies.launchers.subprocess_script"
_COMMAND = "_hydra_subprocess_cmd"  # the function that launcher calls to build a child's command under Hydra
# what Lightning's launcher sets in this process's environment for its children (and then reads back as "launched")
_LAUNCH_ENV = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_command(local_rank: int) -> tuple[list[str], str]:
    """(command, cwd) re-running the current multirun job alone as extra process `local_rank`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra = HydraConfig.get()
    spec = getattr(__main__, "__spec__", None)
    program = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, sys.argv[0]]
    command = [*program, *hydra.overrides.task, f'hydra.run.dir="{hydra.runtime.output_dir}"',
               f"hydra.job.name={hydra.job.name}_rank{local_rank}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


@contextlib.contextmanager
def isolated_sweep_job() -> Iterator[None]:
    """While active, a Lightning launcher started in a Hydra multirun job re-launches that job alone; at the end the
    launcher's environment variables are put back and the job's process group (if the fit made one) is closed."""
    if not _in_multirun():
        yield
        return
    import importlib

    import torch.distributed as dist

    launcher = importlib.import_module(_LAUNCHER)
    original = getattr(launcher, _COMMAND, None)
    if original is not None:  # (another Lightning release may build its commands elsewhere: then leave it be)
        setattr(launcher, _COMMAND, job_command)
    had_group = dist.is_available() and dist.is_initialized()
    environment = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    if "LOCAL_RANK" not in os.environ:  # Lightning launches this job's processes: a rendezvous port of its own
        # torch keeps one store server per port in a process, with the finished job's keys (its peers' addresses):
        # a MASTER_PORT set before the sweep would send every later job to it (gloo: connection refused)
        from lightning.fabric.plugins.environments.lightning import find_free_network_port

        os.environ["MASTER_PORT"] = str(find_free_network_port())
    try:
        yield
    finally:
        if original is not None:
            setattr(launcher, _COMMAND, original)
        if not had_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
