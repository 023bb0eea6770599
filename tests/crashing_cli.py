"""`python tests/crashing_cli.py <overrides>`: the d3llm_pipeline CLI with distillation crashing at global step
$D3LLM_TEST_CRASH_AT on every rank, leaving its last checkpoint behind as a killed multi-process job would.

A script, not `python -c`, because Lightning's ddp / fsdp launcher re-runs sys.argv once per extra device: every
rank then crashes at the same step. Used by tests/e2e/test_fsdp_cpu.py.
"""

from __future__ import annotations

import os
import sys

from d3llm_pipeline.__main__ import main, preflight
from d3llm_pipeline.training.distill_module import DistillModule

_training_step = DistillModule.training_step


def _crashing_step(self, batch, batch_idx):
    if self.global_step == int(os.environ["D3LLM_TEST_CRASH_AT"]):
        raise RuntimeError("simulated crash")
    return _training_step(self, batch, batch_idx)


if __name__ == "__main__":
    DistillModule.training_step = _crashing_step
    preflight(sys.argv[1:])
    main()
