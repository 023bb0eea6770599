"""The errors every layer raises, at the bottom of the package (nothing here imports anything of ours).

    raise ConfigError("decode.threshold must be > 0, got -1")   # a config key: names the key and the fix
    raise PipelineError(f"{path} is corrupt; ...")              # any other user-facing failure

A PipelineError is shown as one `error:` line and exit code 2 (stages/__init__.py run_stage); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing error: its message says what is wrong and what to do; shown as one line, exit code 2."""


class ConfigError(PipelineError, ValueError):
    """A configuration error; the message names the key and the fix."""


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an exception's text (library errors run to many lines), for one-line errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless `cond` (the schemas' range and cross-key checks)."""
    if not cond:
        raise ConfigError(message)
