"""The one entry point: `python -m d3llm_pipeline stage=<name> [overrides]` (add -m for a Hydra multirun).

Examples:
    python -m d3llm_pipeline stage=teacher
    python -m d3llm_pipeline stage=eval decode=vanilla
    python -m d3llm_pipeline -m stage=eval decode=threshold decode.threshold=0.1,0.3,0.6,1.0,1.5

Before Hydra runs anything, `preflight` composes and validates every job of the command line (each sweep point
too): a mistake ends in one `error:` line and exit code 2 (HYDRA_FULL_ERROR=1 or debug=true: a traceback). A run
or sweep dir named by the clock (the default `outputs/runs/<stage>/<date>_<time>`) is then claimed here and given
to Hydra as it is: `<date>_<time>_2`, `_3`, ... when another run started in the same second took it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Offline by default: nothing in the embedded pipeline needs a hub, and a stray download must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import d3llm_pipeline.config  # noqa: E402,F401  (registers the ${cwd:} and ${per_job:} resolvers)
from d3llm_pipeline.config.preflight import Preflight, check_command_line, is_plain  # noqa: E402
from d3llm_pipeline.errors import PipelineError  # noqa: E402
from d3llm_pipeline.runtime import fresh_dir, one_of_several_ranks  # noqa: E402
from d3llm_pipeline.stages import full_error_requested, run_stage  # noqa: E402

# conf/ at the repo's top level, reached through the package's `conf` link (a wheel holds a copy in its place)
CONF_DIR = Path(__file__).resolve().parent / "conf"


def preflight(argv: list[str]) -> Preflight | None:
    """Validate every job of the command line before Hydra runs anything (config/preflight.py).

    A bad config value, unknown key or group option, malformed override or bad sweep point ends here in one
    `error:` line and exit code 2. With HYDRA_FULL_ERROR=1 (or debug=true) the exception propagates instead, with
    its full traceback, and debug=true turns on Hydra's full tracebacks for the run itself.
    """
    if not is_plain(argv):  # --help, --cfg, -cn, --config-dir ...: Hydra's business
        return None
    debug_requested = full_error_requested() or any(arg.lstrip("+") in ("debug=true", "debug=True") for arg in argv)
    try:
        checked = check_command_line(argv, CONF_DIR)
    except PipelineError as err:
        if debug_requested:
            raise
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        sys.exit(2)
    except Exception:  # a pre-flight bug must never block a run: Hydra and run_stage check again
        if debug_requested:
            raise
        return None
    if checked.debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    return checked


def fresh_run_dir(checked: Preflight | None) -> list[str]:
    """The override that gives Hydra a run / sweep dir of its own when the config names it by the clock: the dir
    the pre-flight resolved, or `_2`, `_3`, ... after it when another run took it (runtime.fresh_dir), created
    here. Nothing when the dir is named (a rerun may mean it) or a launcher started this process as one rank of
    several (all ranks must meet in one dir)."""
    if checked is None or checked.dated is None or one_of_several_ranks():
        return []
    key, directory = checked.dated
    return [f'{key}="{fresh_dir(directory)}"']


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    result = run_stage(cfg)
    # A number returned from the task function is what Hydra sweepers optimise.
    return result.get("accuracy") if isinstance(result, dict) else None


def cli(argv: list[str]) -> None:
    """`python -m d3llm_pipeline <argv>`: the pre-flight, then the Hydra app on `argv` (tests call this in-process;
    exit codes arrive as SystemExit)."""
    argv = [*argv, *fresh_run_dir(preflight(argv))]
    saved = sys.argv
    sys.argv = [saved[0] if saved else "d3llm_pipeline", *argv]  # Hydra's main parses sys.argv
    try:
        main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    cli(sys.argv[1:])
