"""lm-eval's own command line with our model `d3llm` registered and our tasks on the include path.

    python -m d3llm_pipeline.lmeval --model d3llm \
        --model_args pretrained=outputs/artifacts/teacher,decode=d3llm,threshold=0.5,batch_size=32 \
        --tasks arith --metadata '{"arith_n": 200}' --output_path outputs/lmeval --log_samples

lm-eval 0.4.13 finds models only in its own registry (no entry point for outside packages; --include_path adds
tasks only), so plain `lm_eval --model d3llm` cannot see us: this module checks the command line first
(cli_checks.py: the checkpoint, our tasks' data), imports our registration, adds d3llm_pipeline/lmeval/tasks to
--include_path, then hands over to lm_eval.__main__.cli_evaluate. Offline by default, as the main CLI
(HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to download). A mistake ends in one `error:` line and exit code 2
(HYDRA_FULL_ERROR=1: the traceback). The NFE / tokens / TPF summary is logged after the decoding (stats_path=<file>
in model_args also writes per-request rows).
"""

from __future__ import annotations

import logging
import os
import sys

# Offline unless the user says otherwise: a node without network must fail in seconds, not after Hub retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from d3llm_pipeline.errors import PipelineError  # noqa: E402
from d3llm_pipeline.lmeval import TASKS_DIR  # noqa: E402  (light: no torch)
from d3llm_pipeline.lmeval.cli_checks import check_command_line  # noqa: E402


def _evaluate(args: list[str]) -> None:
    import lm_eval.models  # noqa: F401  (lm-eval's lazy model table: registered before ours so `hf` etc. still work)
    from lm_eval.__main__ import cli_evaluate

    import d3llm_pipeline.lmeval.model  # noqa: F401  (registers --model d3llm)

    # lm-eval's CLI takes one --include_path; a user's own wins (then `arith` is unknown unless it is there too)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args = [*args, "--include_path", str(TASKS_DIR)]
    sys.argv = [sys.argv[0], *args]
    # lm-eval configures only its own logger; ours carries the NFE / tokens / TPF summary of every run
    ours = logging.getLogger("d3llm_pipeline.lmeval")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s [d3llm] %(message)s", "%Y-%m-%d:%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    cli_evaluate()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_command_line(args)
        _evaluate(args)
    except PipelineError as err:  # ours (the checks, the model, the task hooks): one line, as the main CLI
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
