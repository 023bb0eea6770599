"""Fingerprinted training artifacts: a teacher or student is reused only when it was made with the same settings.

A training stage describes what shapes its product as a flat dict of the config keys a user would change
(`{"model.arch.n_layer": 4, "stage.max_steps": 4800, "seed": 0, ...}`, its *identity*). The published checkpoint
dir holds `artifact.json` = {kind, fingerprint (sha256 of the identity), identity}; the Lightning resume dir holds
the same file, written before the first step. On a rerun:

    identity = {...}; fp = fingerprint(identity)
    if reusable(final_dir, "teacher", identity, ways_out): ...      # True: same settings, reuse it
    # False: nothing finished there; a finished artifact made with other settings raises one ConfigError line
    #        naming each key that differs (old -> new) and the two ways out

`artifact_lock(dir)` keeps two jobs (e.g. a parallel sweep whose jobs were pointed at one dir) from writing
the same artifact at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from d3llm_pipeline.errors import ConfigError, PipelineError
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.ownership import ARTIFACT_FILE


def fingerprint(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten(prefix: str, section: dict[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} under prefix "x" -> {"x.a.b": 1}: identities use the keys a user types."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(name, value))
        else:
            flat[name] = value
    return flat


def write_identity(directory: Path, kind: str, identity: dict[str, Any]) -> str:
    """Write `artifact.json` into `directory`; returns the fingerprint."""
    fp = fingerprint(identity)
    atomic_write_json(Path(directory) / ARTIFACT_FILE, {"kind": kind, "fingerprint": fp, "identity": identity})
    return fp


def read_identity(directory: str | Path) -> dict[str, Any] | None:
    """The artifact.json of `directory`, or None when there is none (or it is unreadable)."""
    path = Path(directory) / ARTIFACT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_fingerprint(path: str | Path) -> str:
    """What identifies a checkpoint that later work builds on: its recorded fingerprint, else one of its weights.

    Weight files over 256 MB (real 7-8 B checkpoints) are identified by size and mtime instead of a full hash,
    so asking costs milliseconds, not minutes.
    """
    recorded = read_identity(path)
    if recorded and recorded.get("fingerprint"):
        return recorded["fingerprint"]
    weights = []
    for file in sorted(Path(path).glob("*.safetensors")):
        stat = file.stat()
        weights.append(file_sha256(file) if stat.st_size < 256 << 20 else f"{file.name}:{stat.st_size}:"
                       f"{stat.st_mtime_ns}")
    return fingerprint({"weights": weights})


# decode.* keys added after evals were first reused, with the value every earlier eval had
ADDED_DECODE_KEYS = {"compile": False, "temperature": 0.0, "seed": 0, "max_forwards": None}


def eval_request(cfg: Any, model_fp: str | None = None) -> str:
    """What an eval's result depends on: the model's fingerprint (`model_fp` when already known), the seed and the
    decode / task / stage sections (a composed stage=eval config). Two evals with the same request give the same
    metrics, so one can be reused."""
    from omegaconf import OmegaConf

    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("decode", "task", "stage")}
    for key, default in ADDED_DECODE_KEYS.items():  # added later: at their defaults, the request it always was
        if sections["decode"].get(key, default) == default:
            sections["decode"].pop(key, None)
    return fingerprint({"model": model_fp or model_fingerprint(str(cfg.model.path)), "seed": cfg.seed, **sections})


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every key whose value differs (missing keys shown as <unset>)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"{key}: {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}")
    return lines


def check_same(directory: Path, kind: str, identity: dict[str, Any], ways_out: str,
               ignore: tuple[str, ...] = ()) -> None:
    """Raise a one-line ConfigError unless `directory`'s artifact.json records this identity.

    ignore: keys that may differ (e.g. the device count when a run resumes on another number of GPUs: the
    schedule does not depend on it, see training/distill_data.py)."""
    recorded = read_identity(directory)
    if recorded is None:
        raise ConfigError(f"the {kind} in {directory} does not record the settings it was made with (no "
                          f"{ARTIFACT_FILE}: written by an older version or by hand), so it cannot be reused "
                          f"safely; {ways_out}")
    if recorded.get("fingerprint") == fingerprint(identity):
        return
    old = {k: v for k, v in recorded.get("identity", {}).items() if k not in ignore}
    if ignore and old == {k: v for k, v in identity.items() if k not in ignore}:
        return
    diff = differences(recorded.get("identity", {}), identity)
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise ConfigError(f"the {kind} in {directory} was made with other settings ({shown or 'unknown differences'}); "
                      f"{ways_out}")


REUSED = "reused"  # key a stage adds to its returned summary when it reused a finished artifact (no work)


def reusable(final: Path, kind: str, identity: dict[str, Any], ways_out: str, finished_marker: str) -> bool:
    """True if a finished artifact with this identity is at `final`; raise if a different one is there."""
    if not (final / finished_marker).is_file():
        return False
    check_same(final, kind, identity, ways_out)
    return True


@contextlib.contextmanager
def artifact_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<target>.lock` while writing `target`; fail at once if another job holds it.

    The (empty, hidden) lock file stays: deleting it on release would let two later jobs lock two different files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, single-job use only
        yield
        return
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise PipelineError(f"{target} is being written by another job right now (pid {holder}); give this "
                                "job its own output dir or wait for that one to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
