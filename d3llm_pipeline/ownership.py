"""What a stage may delete or replace: only what the pipeline itself made ("never destroy what we did not make").

Every directory a stage writes holds the pipeline's marker, `artifact.json` with its `kind` (teacher, student,
trajectories, export, fixture, run; training artifacts add their identity, see artifacts.py). Before a stage writes, removes
or replaces a path it checks that the path is absent, an empty directory, or ours of that kind; anything else (a
user's checkpoint, a non-empty dir without our marker, a file) stops the stage with one PipelineError line naming
the path and the way out, and the path is left untouched. `stage.overwrite=true` never lifts this.

    check_ours(path, "teacher", "stage.out_dir")     # raise unless absent / empty / our teacher (WAY_OUT: the fix)
    claim(path, "run", "output_dir")                 # the same check, then mkdir + marker (kind only)
    remove_ours(path, "teacher", "stage.out_dir")    # rmtree, only after the same check
    require_writable(path, "stage.out_dir", need_bytes=2**30)   # creatable, writable, room to spare
    with staged(final, "export", "stage.out_dir") as tmp:   # write into a fresh temp dir beside final;
        write_files(tmp)                                    # on success it replaces final (if ours)

Inside a directory a stage has claimed (a trajectory dir's shards, a student dir's adapter/) the stage manages its
own files.

Artifacts written before markers existed are recognised by what they always held (`LEGACY`), so upgrading never
turns a user's earlier runs into "foreign" content. No torch import here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from d3llm_pipeline.errors import PipelineError

ARTIFACT_FILE = "artifact.json"
# kind of artifact -> the way out named when its path holds something else
WAY_OUT = {
    "teacher": "train the tiny teacher into another dir with model.path=<new dir>",
    "student": "distil into another dir with paths.student_dir=<new dir> (stage.out_dir=<new dir>)",
    "trajectories": "write them into another dir with stage.out_dir=<new dir> (or paths.artifacts_dir=<new dir>)",
    "export": "export into another dir with stage.out_dir=<new dir> (an earlier export of ours: delete it yourself)",
    "fixture": "prepare the fixture copy into another dir",
    "run": "give the run a new dir (hydra.run.dir=<new dir>, or leave it at its dated default)",
}


def marker_kind(directory: str | Path) -> str | None:
    """The `kind` recorded in `directory`'s artifact.json, or None (no marker, unreadable, not a dict)."""
    try:
        data = json.loads((Path(directory) / ARTIFACT_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _json_has(path: Path, key: str, value: str | None = None) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and key in data and (value is None or data[key] == value)


# What each kind of artifact held before it carried a marker (and still holds): recognised as ours too.
LEGACY: dict[str, Callable[[Path], bool]] = {
    # a finished tiny teacher always carried its training summary
    "teacher": lambda p: _json_has(p / "training_summary.json", "stage", "teacher"),
    # a student dir: its merged/ model carries the student's identity
    "student": lambda p: marker_kind(p / "merged") == "student",
    # a trajectory dir (its shards' run.json, or its merged dataset's merge.json), or that merged dataset itself
    "trajectories": lambda p: (any(p.glob("shard-*/run.json")) or (p / "merged" / "merge.json").is_file()
                               or (p / "merge.json").is_file()),
    # a Hydra run / sweep dir, or a job dir of ours (metrics.json with the stage that wrote it, or a failed job)
    "run": lambda p: ((p / ".hydra").is_dir() or (p / "multirun.yaml").is_file() or (p / "error.txt").is_file()
                      or _json_has(p / "metrics.json", "stage")),
}


def is_ours(path: str | Path, kind: str) -> bool:
    """True when `path` is absent, an empty directory, or a directory holding our artifact of `kind`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return True
    if path.is_symlink() or not path.is_dir():
        return False  # a file (or a link: replacing it would act on whatever it points to) is never ours
    if not any(path.iterdir()):
        return True
    if marker_kind(path) == kind:
        return True
    legacy = LEGACY.get(kind)
    return legacy is not None and legacy(path)


def check_ours(path: str | Path, kind: str, key: str, way_out: str | None = None) -> None:
    """Raise one PipelineError line unless `path` may be written as our `kind` of artifact (see is_ours)."""
    if is_ours(path, kind):
        return
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        what = "a link" if path.is_symlink() else "a file"
        raise PipelineError(f"{key}: {path} is {what}, not a directory the pipeline made, so it is left untouched; "
                            f"{way_out or WAY_OUT[kind]}")
    found = marker_kind(path)
    made = f"holds our {found}, not a {kind}" if found else f"is not empty and holds no {ARTIFACT_FILE} of ours"
    raise PipelineError(f"{key}: {path} {made}, so the pipeline will not write into or replace it (stage.overwrite "
                        f"does not change this); {way_out or WAY_OUT[kind]}")


def write_marker(directory: str | Path, kind: str) -> None:
    """`{"kind": kind}` as `directory`'s artifact.json, unless it already holds one (an identity, say)."""
    directory = Path(directory)
    if (directory / ARTIFACT_FILE).is_file():
        return
    from d3llm_pipeline.fileio import atomic_write_json

    atomic_write_json(directory / ARTIFACT_FILE, {"kind": kind})


def claim(path: str | Path, kind: str, key: str, way_out: str | None = None) -> Path:
    """check_ours, then create `path` and mark it ours: from here on the stage may write inside it."""
    check_ours(path, kind, key, way_out)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind)
    return path


def remove_ours(path: str | Path, kind: str, key: str, way_out: str | None = None) -> None:
    """Delete `path` (our `kind` of artifact) if it exists; anything not ours raises and stays."""
    check_ours(path, kind, key, way_out)
    if Path(path).exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def staged(final: str | Path, kind: str, key: str, way_out: str | None = None) -> Iterator[Path]:
    """Yield a fresh, empty temp dir beside `final`; when the block finishes, it becomes `final`.

    `final` is checked before any work and again at the swap (another job may have written there meanwhile).
    The temp dir is named by mkdtemp, so it can never be someone else's; an old `final` of ours is renamed aside
    first and deleted only once the new one is in place. On an exception the temp dir is removed.
    """
    final = Path(final)
    check_ours(final, kind, key, way_out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        write_marker(tmp, kind)
        check_ours(final, kind, key, way_out)
        aside = None
        if final.exists():
            aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, aside / final.name)
        os.replace(tmp, final)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def require_writable(directory: str | Path, key: str, need_bytes: int = 0) -> None:
    """`directory` exists as a writable dir or can be created (nothing is created here), with room to spare.

    We may run as root, for whom permission bits never deny a write, so what is checked is what stops root too:
    a path component that is a file, a read-only file system, and free space.
    """
    target = Path(directory).absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise PipelineError(f"cannot write to {key}={directory}: {probe} is a file, not a directory; point {key} "
                            "at a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PipelineError(f"cannot write to {key}={directory}: {probe} is not writable (permissions or a "
                            f"read-only file system); point {key} at a writable directory")
    free = _free_bytes(probe)
    if need_bytes and free is not None and free < need_bytes:
        raise PipelineError(f"cannot write to {key}={directory}: {free / 2**20:.0f} MiB free on its file system, "
                            f"about {need_bytes / 2**20:.0f} MiB needed; free some space or point {key} elsewhere")
