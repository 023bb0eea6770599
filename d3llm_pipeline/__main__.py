"""The one entry point: `python -m d3llm_pipeline stage=<name> [overrides]` (add -m for a Hydra multirun).

Examples:
    python -m d3llm_pipeline stage=teacher
    python -m d3llm_pipeline stage=eval decode=vanilla
    python -m d3llm_pipeline -m stage=eval decode=threshold decode.threshold=0.1,0.3,0.6,1.0,1.5
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

import d3llm_pipeline.config  # noqa: E402,F401  (registers the ${cwd:} resolver)
from d3llm_pipeline.stages import STAGES, run_stage  # noqa: E402

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _reject_unknown_stage(argv: list[str]) -> None:
    """Hydra's own message for a missing group option is a multi-line dump; give one line instead."""
    for arg in argv:
        if arg.startswith("stage="):
            for choice in arg.split("=", 1)[1].split(","):
                if choice and choice not in STAGES:
                    sys.stderr.write(
                        f"error: unknown stage {choice!r}; choose stage= one of: {', '.join(sorted(STAGES))}\n"
                    )
                    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    result = run_stage(cfg)
    # A number returned from the task function is what Hydra sweepers optimise.
    return result.get("accuracy") if isinstance(result, dict) else None


if __name__ == "__main__":
    _reject_unknown_stage(sys.argv[1:])
    main()
