"""lm-eval's own command line with our model `d3llm` registered and our tasks on the include path.

    python -m d3llm_pipeline.lmeval --model d3llm \
        --model_args pretrained=outputs/artifacts/teacher,decode=d3llm,threshold=0.5,batch_size=32 \
        --tasks arith --metadata '{"arith_n": 200}' --output_path outputs/lmeval --log_samples

lm-eval 0.4.13 finds models only in its own registry (no entry point for outside packages; --include_path adds
tasks only), so plain `lm_eval --model d3llm` cannot see us: this module imports our registration first, adds
d3llm_pipeline/lmeval/tasks to --include_path, then hands over to lm_eval.__main__.cli_evaluate. The NFE /
tokens / TPF summary is logged after the decoding (stats_path=<file> in model_args also writes per-request rows).
"""

from __future__ import annotations

import logging
import sys

import lm_eval.models  # noqa: F401  (lm-eval's lazy model table: registered before ours so `hf` etc. still work)

from d3llm_pipeline.lmeval import TASKS_DIR  # noqa: E402  (importing it registers --model d3llm)


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    # lm-eval's CLI takes one --include_path; a user's own wins (then `arith` is unknown unless it is there too)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = [sys.argv[0], *args]
    # lm-eval configures only its own logger; ours carries the NFE / tokens / TPF summary of every run
    ours = logging.getLogger("d3llm_pipeline.lmeval")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s [d3llm] %(message)s", "%Y-%m-%d:%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    cli_evaluate()


if __name__ == "__main__":
    main()
