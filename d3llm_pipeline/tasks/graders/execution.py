"""Sandboxed execution of model-written programs (HumanEval / MBPP grading), one subprocess per program.

Code runs only when the caller opts in (``allow_code_execution=True``, from ``task.allow_code_execution``);
otherwise a ``ConfigError`` says how to turn it on. Typical use::

    from d3llm_pipeline.tasks.graders.execution import ExecutionLimits, run_programs

    results = run_programs(programs, ExecutionLimits(timeout_s=5), allow_code_execution=True, workers=2)
    pass_at_1 = sum(r.passed for r in results) / len(results)

Each program runs in a fresh interpreter (``python -I -B _sandbox_runner.py``), never in this process, with:

- its own temporary working directory (also ``HOME`` and ``TMPDIR``), deleted afterwards;
- a minimal environment (no tokens, proxies or ``PYTHON*`` variables reach it) and stdin from /dev/null;
- a wall-clock timeout enforced here (the whole process group is killed), and in the child RLIMIT_CPU,
  RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC (ignored for root) and no core dumps;
- an audit hook installed before the program runs that refuses writes, deletes, renames, chmods and links
  outside the working directory, process spawning, sockets, signals and ctypes (see ``_sandbox_runner.py``).

The result is an ``ExecutionResult``: ``status`` is ``passed`` (ran to the end), ``failed`` (an exception,
an assert, an early exit, or any refused action), ``timed_out`` (wall-clock or CPU limit) or ``error`` (the
sandbox itself failed, or the process died from a signal), with a one-line ``reason``. Several programs run
in parallel through a small thread pool whose threads only wait on their subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from d3llm_pipeline.errors import ConfigError

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
STATUSES = ("passed", "failed", "timed_out", "error")
OPT_IN_MESSAGE = (
    "code execution is off: set task.allow_code_execution=true to let HumanEval/MBPP grading run "
    "model-written programs (each in a sandboxed subprocess with time, memory and write limits)"
)
_OUTPUT_FILE = ".output"  # the program's stdout + stderr, inside its sandbox dir
_TAIL_BYTES = 1000


@dataclass(frozen=True)
class ExecutionLimits:
    """Per-program limits. ``timeout_s`` covers interpreter start-up too: lm-eval's ``code_eval`` allows 3 s
    of execution plus about 1 s for its process to start; 5 s leaves room on a busy 2-core machine."""

    timeout_s: float = 5.0  # wall clock, enforced by the parent
    cpu_s: int | None = None  # RLIMIT_CPU; None = ceil(timeout_s)
    memory_mb: int = 1024  # RLIMIT_AS (address space, so it must cover the interpreter's own mappings)
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program (or its output) may write
    max_processes: int = 1  # RLIMIT_NPROC: no forks and no threads (root ignores it; the hook does not)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"execution limit {name} must be > 0, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ConfigError(f"execution limit cpu_s must be >= 1 (or null), got {self.cpu_s}")

    def child_limits(self) -> dict:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s)
        return {"cpu_s": int(cpu), "memory_mb": int(self.memory_mb), "file_size_mb": int(self.file_size_mb),
                "max_processes": int(self.max_processes)}


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # one of STATUSES
    reason: str = ""  # one line: the exception, the limit hit, or the refused action
    duration_s: float = 0.0  # wall time of the subprocess, start-up included
    violations: tuple[str, ...] = ()  # actions the audit hook refused (the first few)
    output_tail: str = ""  # the end of the program's stdout + stderr, for debugging

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {**asdict(self), "violations": list(self.violations)}


def require_opt_in(allow_code_execution: bool) -> None:
    """Raise the one-line ``ConfigError`` unless the user turned code execution on."""
    if allow_code_execution is not True:
        raise ConfigError(OPT_IN_MESSAGE)


def run_program(
    program: str, limits: ExecutionLimits | None = None, *, allow_code_execution: bool = False
) -> ExecutionResult:
    """Run one program (source text) in the sandbox and report how it ended."""
    require_opt_in(allow_code_execution)
    return _run_sandboxed(program, limits or ExecutionLimits())


def run_programs(
    programs: Sequence[str],
    limits: ExecutionLimits | None = None,
    *,
    allow_code_execution: bool = False,
    workers: int = 2,
) -> list[ExecutionResult]:
    """Run many programs, ``workers`` at a time, each in its own subprocess; results in input order."""
    require_opt_in(allow_code_execution)
    if workers < 1:
        raise ConfigError(f"execution workers must be >= 1, got {workers}")
    limits = limits or ExecutionLimits()
    if workers == 1 or len(programs) <= 1:
        return [_run_sandboxed(p, limits) for p in programs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: _run_sandboxed(p, limits), programs))


def _child_env(root: str) -> dict[str, str]:
    # Nothing from our environment (API tokens, proxies, HF caches) reaches the program; one thread per
    # numeric library keeps an accidental numpy import inside RLIMIT_AS and RLIMIT_NPROC.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": root, "TMPDIR": root,
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


def _run_sandboxed(program: str, limits: ExecutionLimits) -> ExecutionResult:
    root = os.path.realpath(tempfile.mkdtemp(prefix="d3llm_exec_"))
    try:
        return _run_in(root, program, limits)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_in(root: str, program: str, limits: ExecutionLimits) -> ExecutionResult:
    Path(root, "program.py").write_text(program, encoding="utf-8")
    # The verdict travels on a private pipe, not stdout, which the program can print anything to.
    read_fd, write_fd = os.pipe()
    spec = {"program": "program.py", "root": root, "verdict_fd": write_fd, "limits": limits.child_limits()}
    cmd = [sys.executable, "-I", "-B", str(RUNNER), json.dumps(spec)]
    start = time.monotonic()
    timed_out = False
    try:
        with open(Path(root, _OUTPUT_FILE), "wb") as out:
            try:
                proc = subprocess.Popen(
                    cmd, cwd=root, env=_child_env(root), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True,
                )
            except OSError as e:
                return ExecutionResult("error", f"could not start the sandbox: {e}")
            finally:
                os.close(write_fd)  # only the child holds the write end now: EOF when it exits
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        duration = time.monotonic() - start
        verdict = _read_verdict(read_fd)
    finally:
        os.close(read_fd)
    tail = _output_tail(Path(root, _OUTPUT_FILE))
    return _classify(proc.returncode, timed_out, verdict, limits, duration, tail)


def _kill_group(proc: subprocess.Popen) -> None:
    # start_new_session made the child a group leader: kill the group, so nothing it started survives.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_verdict(fd: int) -> dict | None:
    # Non-blocking: the runner writes its verdict in one write before exiting, and a stray descendant
    # holding the write end open must not hang the grader.
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    try:
        verdict = json.loads(b"".join(chunks).decode())
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("status") in STATUSES else None


def _output_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:  # the program may have removed or replaced its own output file
        return ""


def _classify(
    returncode: int, timed_out: bool, verdict: dict | None, limits: ExecutionLimits, duration: float, tail: str
) -> ExecutionResult:
    def result(status: str, reason: str, violations=()) -> ExecutionResult:
        return ExecutionResult(status, reason, round(duration, 3), tuple(violations), tail)

    if timed_out:
        return result("timed_out", f"wall-clock limit of {limits.timeout_s:g} s exceeded")
    if returncode == -signal.SIGXCPU:
        return result("timed_out", f"CPU-time limit of {limits.child_limits()['cpu_s']} s exceeded")
    if verdict is not None:
        return result(verdict["status"], str(verdict.get("reason", "")), verdict.get("violations", ()))
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return result("error", f"killed by {name} (memory or CPU hard limit, or a crash)")
    # No verdict but a normal exit: the program ended the interpreter itself (os._exit) before its tests ran.
    return result("failed", f"exited with code {returncode} before its tests finished")
