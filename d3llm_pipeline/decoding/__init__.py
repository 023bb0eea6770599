"""Decoding for diffusion LMs: semi-autoregressive block decoding, multi-block d3LLM decoding, selection rules,
the prefix KV cache and TPF accounting (the pure core: tensors in, tensors out).

    from d3llm_pipeline.decoding import DecodeSpec, decode, tokens_per_forward
    result = decode(lm, prompt_ids, DecodeSpec(gen_length=64, block_size=16, rule="threshold"))
    tpf = tokens_per_forward(result.tokens, result.nfe)

Where things are: the knobs and their checks (spec.py, no torch), the model protocol (lm.py), the shared batch
helpers (batch.py), token selection (selection.py), the semi-AR loop (semi_ar.py), multi-block decoding
(multi_block.py), the KV cache's forward plans (prefix_cache.py), sampling noise (noise.py), TPF (metrics.py).
Importing the package loads only spec.py; the torch modules load on first use of their names (the config layer
reads the knobs without paying for torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from d3llm_pipeline.decoding.spec import (
    CACHE_PLANS,
    ENTROPY_DTYPES,
    RULES,
    SCORES,
    DecodeDefaults,
    DecodeSpec,
    spec_from,
)

# name -> the module that defines it (imported lazily: each pulls in torch)
_LAZY = {
    "DecodeResult": "batch", "DiffusionLM": "lm", "decode": "semi_ar", "generated_token_counts": "metrics",
    "tokens_per_forward": "metrics", "Prediction": "selection", "higher_is_better": "selection",
    "predict": "selection", "select_threshold": "selection", "select_tokens": "selection",
    "select_vanilla": "selection",
}

__all__ = ["CACHE_PLANS", "ENTROPY_DTYPES", "RULES", "SCORES", "DecodeDefaults", "DecodeSpec", "spec_from",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"d3llm_pipeline.decoding.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'd3llm_pipeline.decoding' has no attribute {name!r}")
