"""Shared test setup: offline hubs, one torch thread (tests run beside other work), small fixtures."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    return build_tokenizer()
