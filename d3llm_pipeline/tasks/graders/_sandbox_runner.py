"""Child side of the code-execution sandbox: runs ONE candidate program, then reports a verdict.

Not imported by the pipeline: ``execution.py`` starts it as a script in a fresh interpreter,

    python -I -B _sandbox_runner.py '{"program": "program.py", "root": "/tmp/d3llm_exec_x", "verdict_fd": 5, ...}'

with the sandbox directory as its working directory. It uses the standard library only (``-I`` keeps the
package off ``sys.path``). In order, it:

1. sets resource limits (address space, CPU seconds, file size, processes, no core dumps);
2. reads the program, then installs an audit hook (``sys.addaudithook``; Python code cannot remove one)
   that rejects writes outside the sandbox directory, process spawning, sockets, signals to other
   processes, ctypes and raising the resource limits again;
3. executes the program and writes one JSON verdict to ``verdict_fd`` (a pipe the parent created):
   ``{"status": "passed" | "failed" | "error", "reason": str, "violations": [str, ...]}``.

A program that attempted a blocked action is reported as failed even if it caught the error, so the
result always says why. This is defence in depth against accidental damage by model-written code (the
pipeline runs as root, so file permissions protect nothing), NOT a security boundary against code written
to escape: audit hooks can be bypassed from C, which is why ctypes is blocked. For hostile code use a
container or VM.
"""

import json
import os
import resource
import signal
import sys

# Flags of an `open` event that mean "this may create or modify a file".
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_ALWAYS_WRITABLE = ("/dev/null",)

# Events with path arguments that modify the filesystem: event -> indices of its path arguments and of the
# dir_fd each one is relative to (None: no dir_fd argument). Signatures from Python's audit events table.
_PATH_EVENTS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)),  # also os.replace; both ends, or a file could be moved out of the sandbox
    "os.link": ((0, 2), (1, 3)),  # both ends: a hard link to an outside file would let writes reach it
    "os.symlink": ((1, 2),),  # the link itself; writes through it are resolved with realpath below
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),),
    "os.truncate": ((0, None),),
    "os.utime": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),),
    "shutil.copyfile": ((1, None),),
    "shutil.copymode": ((1, None),),
    "shutil.copystat": ((1, None),),
    "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
    "shutil.chown": ((0, None),),
    "shutil.unpack_archive": ((1, None),),
}

# Events refused outright: new processes, network, signals (as root, os.kill could hit any process), native
# code (ctypes would bypass this hook: every ctypes event except opening the process itself, see _check)
# and raising the limits set below (root may raise hard limits).
_BLOCKED_EVENTS = {
    "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.startfile", "pty.spawn",
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit",
}
_BLOCKED_PREFIXES = ("ctypes.",)


class SandboxViolation(PermissionError):
    """Raised into the program by the audit hook. A PermissionError, so that library code that already copes
    with an unwritable path (e.g. skipping a cache file) degrades the same way here."""


def set_limits(limits: dict) -> None:
    """Soft and hard limits alike: a non-root process cannot raise a hard limit back (root is stopped by the
    hook's block on resource.setrlimit). RLIMIT_NPROC is ignored for root; it still binds other users."""
    mb = 1024 * 1024
    pairs = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, limits["max_processes"]),
    ]
    for which, value in pairs:
        resource.setrlimit(which, (value, value))
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL one second later if it is ignored.
    cpu = limits["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # Past RLIMIT_FSIZE a write then fails with OSError (EFBIG) instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class Guard:
    """The audit hook: allows everything inside ``root``, records and refuses what is listed above."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.violations: list[str] = []
        self._busy = False  # realpath/readlink below may raise events of their own: do not recurse

    def inside(self, path, dir_fd=None) -> bool:
        if isinstance(path, int):  # an already-open descriptor: it was checked when it was opened
            return True
        path = os.fsdecode(os.fspath(path))
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            # Relative to a directory descriptor (shutil.rmtree works this way; -1 means "none").
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        # realpath resolves symlinks, so a link inside the sandbox cannot be used to write outside it.
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep) or real in _ALWAYS_WRITABLE

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        raise SandboxViolation(f"sandbox: {what}")

    def __call__(self, event: str, args: tuple) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._check(event, args)
        finally:
            self._busy = False

    def _check(self, event: str, args: tuple) -> None:
        if event == "ctypes.dlopen" and args[0] is None:
            # `import ctypes` (and so `import numpy`) opens the running process itself; calling anything
            # through it needs a symbol lookup (ctypes.dlsym), which is refused.
            return
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            self.refuse(f"blocked {event}")
        elif event == "open":
            path, mode, flags = args
            writes = bool((flags or 0) & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
            if writes and not self.inside(path):
                how = repr(mode) if mode else f"flags={oct(flags or 0)}"
                self.refuse(f"blocked open({path!r}, {how}) outside the sandbox dir")
        elif event in _PATH_EVENTS:
            for path_i, fd_i in _PATH_EVENTS[event]:
                dir_fd = args[fd_i] if fd_i is not None and fd_i < len(args) else None
                if not self.inside(args[path_i], dir_fd):
                    self.refuse(f"blocked {event}({args[path_i]!r}) outside the sandbox dir")


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _write_verdict(fd: int, status: str, reason: str, violations: list[str]) -> None:
    data = json.dumps({"status": status, "reason": reason, "violations": violations[:5]})
    os.write(fd, data.encode()[:60_000])  # one write below the pipe buffer size: never blocks
    os.close(fd)


def main() -> None:
    spec = json.loads(sys.argv[1])
    fd = spec["verdict_fd"]
    try:
        set_limits(spec["limits"])
        with open(spec["program"], encoding="utf-8") as f:
            source = f.read()
        guard = Guard(spec["root"])
    except BaseException as e:  # a problem of the sandbox, not of the program
        _write_verdict(fd, "error", f"sandbox setup failed: {_short(e)}", [])
        return
    sys.addaudithook(guard)
    # __name__ is not "__main__", as in the reference harnesses: a completion's `if __name__ == "__main__":`
    # block (often reading stdin) does not run.
    namespace = {"__name__": "__candidate__"}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as e:  # SystemExit too: the tests did not all run
        status, reason = "failed", _short(e)
    else:
        status, reason = "passed", ""
    if guard.violations:
        status, reason = "failed", f"sandbox: {guard.violations[0]}"
    _write_verdict(fd, status, reason, guard.violations)


if __name__ == "__main__":
    main()
