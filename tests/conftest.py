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


# A tiny randomly initialised bidirectional GPT-2 (float64) for decoder tests: ids MASK=1, EOS=2, PAD=0, V=20.
MASK, EOS, PAD, VOCAB = 1, 2, 0, 20


@pytest.fixture(scope="module")
def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    from d3llm_pipeline.models.adapter import HFDiffusionAdapter

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        is_causal=False,
        initializer_range=0.2,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():
        # Point EOS's (tied) embedding along the mean of the others so some samples end early and early
        # stopping has something to do; the scale was picked so that only some of the test prompts stop.
        wte = model.transformer.wte.weight
        mean = wte[3:].mean(0)
        wte[EOS] = 1.5 * mean / mean.norm() * wte[3:].norm(dim=-1).mean()
    return HFDiffusionAdapter(model, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (5, 6), generator=g)


