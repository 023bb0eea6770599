"""Decoding for diffusion LMs: semi-autoregressive block decoding, selection rules and TPF accounting.

from d3llm_pipeline.decoding import DecodeSpec, decode, tokens_per_forward
result = decode(lm, prompt_ids, DecodeSpec(gen_length=64, block_size=16, rule="threshold"))
tpf = tokens_per_forward(result.tokens, result.nfe)
"""

from d3llm_pipeline.decoding.metrics import generated_token_counts, tokens_per_forward
from d3llm_pipeline.decoding.selection import (
    RULES,
    SCORES,
    Prediction,
    higher_is_better,
    predict,
    select_threshold,
    select_tokens,
    select_vanilla,
)
from d3llm_pipeline.decoding.semi_ar import decode
from d3llm_pipeline.decoding.spec import CACHE_PLANS, ENTROPY_DTYPES, DecodeResult, DecodeSpec

__all__ = [
    "CACHE_PLANS",
    "ENTROPY_DTYPES",
    "RULES",
    "SCORES",
    "DecodeResult",
    "DecodeSpec",
    "Prediction",
    "decode",
    "generated_token_counts",
    "higher_is_better",
    "predict",
    "select_threshold",
    "select_tokens",
    "select_vanilla",
    "tokens_per_forward",
]
