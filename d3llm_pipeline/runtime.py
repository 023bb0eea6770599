"""Run-time plumbing shared by all stages: thread choice, device, output dir, provenance (git SHA, versions).

    threads = configure_threads("auto")      # 2 on an idle 2-core machine, 1 when the other core is busy
    threads_between(cpu_sample(), later_sample, cores)   # the same choice over a window, our own CPU time left out
    provenance(threads)                      # git SHA, library versions, machine load, threads (every metrics.json)
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

from d3llm_pipeline.errors import ConfigError


def _cpu_times(stat_text: str) -> tuple[int, int]:
    """(idle, total) jiffies from the aggregate 'cpu' line of /proc/stat."""
    fields = [int(v) for v in stat_text.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields)


class CpuSample(NamedTuple):
    """Cumulative CPU counters (jiffies, the unit of /proc/stat and /proc/<pid>/stat alike) at one moment."""

    idle: int  # all cores, idle + iowait
    total: int  # all cores
    own: int  # this process, user + system, all its threads


def cpu_sample_from(stat_text: str, self_stat_text: str) -> CpuSample:
    """A CpuSample from the text of /proc/stat and /proc/self/stat."""
    # /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces, so count fields after its ")": utime and
    # stime (fields 14 and 15 of the line) are the 12th and 13th from there
    after_comm = self_stat_text[self_stat_text.rindex(")") + 1 :].split()
    return CpuSample(*_cpu_times(stat_text), own=int(after_comm[11]) + int(after_comm[12]))


def cpu_sample() -> CpuSample | None:
    """The counters now (no sleeping: two samples taken apart in time make a measurement), or None without /proc."""
    try:
        with open("/proc/stat") as stat, open("/proc/self/stat") as self_stat:
            return cpu_sample_from(stat.read(), self_stat.read())
    except (OSError, ValueError, IndexError):
        return None


def _threads_for(cores: int, other_busy: float) -> int:
    return max(1, min(cores, round(cores - other_busy)))


def threads_between(before: CpuSample, after: CpuSample, cores: int) -> int | None:
    """Threads for the cores other work left free between two samples: cores minus the cores kept busy by anything
    but this process (our own threads, spinning or not, are not "other work"), rounded, at least 1. None when
    no time passed between them."""
    total = after.total - before.total
    if total <= 0:
        return None
    busy = total - (after.idle - before.idle)
    other = max(0, busy - (after.own - before.own))
    return _threads_for(cores, other / total * cores)


def busy_cores(interval: float = 0.3) -> float:
    """Cores other processes keep busy *now*: /proc/stat sampled over `interval` s (this process sleeps).

    The 1-minute load average lags by about a minute, so right after another job it still reads as busy
    and would halve a training run's speed for nothing. Falls back to it where /proc/stat is missing.
    """
    try:
        with open("/proc/stat") as handle:
            idle0, total0 = _cpu_times(handle.read())
        time.sleep(interval)
        with open("/proc/stat") as handle:
            idle1, total1 = _cpu_times(handle.read())
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total = max(1, total1 - total0)
    return (1.0 - (idle1 - idle0) / total) * (os.cpu_count() or 1)


def configure_threads(setting: int | str) -> int:
    """Set torch's intra-op threads deliberately and return the count used.

    'auto' = cores minus the cores other work keeps busy right now (rounded), at least 1. Measured on a 2-core
    box: 2 threads beat 1 when idle (0.125 vs 0.24 s per teacher step), but when another job holds the other
    core the OpenMP threads spin on it and a step gets many times slower, so we never oversubscribe. A training run
    re-decides as it goes (training/threads.py: threads_between over each minute).
    """
    cores = os.cpu_count() or 1
    if setting == "auto":
        threads = _threads_for(cores, busy_cores())
    else:
        try:
            threads = int(setting)
        except (TypeError, ValueError):
            raise ConfigError(f"threads must be 'auto' or a positive integer, got {setting!r}") from None
        if threads < 1:
            raise ConfigError(f"threads must be 'auto' or a positive integer, got {setting!r}")
    import torch  # (lazily: the entry point imports this module before any stage needs torch)

    torch.set_num_threads(threads)
    return threads


def resolve_device(setting: str):
    """`device=auto` picks CUDA when present; an explicit CUDA device on a CPU-only machine is an error."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {setting!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={setting} but no CUDA device is visible; use device=cpu (or auto)")
    return device


def output_dir_of(cfg: Any) -> str:
    """The Hydra job's output dir (or cfg.output_dir when a test or an enclosing stage sets it)."""
    if cfg.get("output_dir"):
        return str(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def launcher_rank() -> int:
    """0 in the process that runs a stage for everyone, else nonzero: a rank set when Lightning's
    `strategy: ddp` re-launched the command for an extra device (LOCAL_RANK / NODE_RANK in the children's
    environment), by torchrun (RANK) or by srun with several tasks (SLURM_PROCID). Only rank 0 may lock, check and
    write artifacts; the others run the stage up to `trainer.fit` and write nothing (Lightning's loggers and
    checkpoints are rank-zero only). `ddp_spawn` never re-runs the stage: its workers only run the fit."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("LOCAL_RANK", "0") or 0) + int(env.get("NODE_RANK", "0") or 0)


def one_of_several_ranks() -> bool:
    """Whether a distributed launcher started this process as one of several running the same command line
    (torchrun: RANK; Lightning's ddp children: LOCAL_RANK; srun with several tasks): they must all find the same
    run dir, so none of them picks a fresh one (fresh_dir)."""
    env = os.environ
    return "RANK" in env or "LOCAL_RANK" in env or int(env.get("SLURM_NTASKS", "1") or 1) > 1


def fresh_dir(base: str | Path) -> str:
    """Create and return `base`, or `base_2`, `base_3`, ... when it exists: the first name no other run took.
    mkdir is atomic, so two runs started in the same second (their dated run dirs equal) never share one."""
    base = str(base)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = base if k == 1 else f"{base}_{k}"
        try:
            Path(candidate).mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"{base}: 10,000 run dirs of that name exist; set hydra.run.dir=<a new dir>")


def git_sha() -> str | None:
    """The SHA of the checkout this package runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Library versions that change numbers (recorded in every metrics.json)."""
    import torch
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import lightning

        found["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover - lightning is a core dependency
        pass
    return found


def provenance(threads: int | None = None) -> dict[str, Any]:
    """Where and with what a number was produced: git SHA, versions, machine load, threads."""
    import torch

    return {
        "git_sha": git_sha(),
        "versions": versions(),
        "host": {
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch_threads": threads if threads is not None else torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
