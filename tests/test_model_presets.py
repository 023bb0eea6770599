"""Real model presets carry their family's d3LLM GSM8K-CoT decoding settings (method.md §6) for decode=d3llm.

conf/decode/d3llm.yaml reads τ, A, D, early stop, d and R from `model.decode_defaults` when the preset has them
(else its embedded defaults); a `decode.<key>=` on the command line always wins.
"""

from __future__ import annotations

import pytest
from conftest import compose_at

from d3llm_pipeline.config.schema import DecodeConfig, ModelConfig, load_section

LLADA = {"threshold": 0.5, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": True,
         "cache_delay_iter": 2, "refresh_interval": 3}
DREAM = {"threshold": 0.4, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": False,
         "cache_delay_iter": 1, "refresh_interval": None}
EMBEDDED = {"threshold": 0.5, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": True,
            "cache_delay_iter": 2, "refresh_interval": None}


def decode_of(tmp_path, *overrides: str) -> DecodeConfig:
    cfg = compose_at(tmp_path, "decode=d3llm", *overrides)
    load_section(cfg.model, ModelConfig, "model")  # the preset's block passes the schema
    return load_section(cfg.decode, DecodeConfig, "decode")


@pytest.mark.parametrize("preset,expected", [
    ("llada_8b_instruct", LLADA), ("d3llm_llada", LLADA), ("dparallel_llada", LLADA),
    ("dream_7b_instruct", DREAM), ("d3llm_dream", DREAM), ("tiny", EMBEDDED), ("student", EMBEDDED),
])
def test_preset_decode_defaults(tmp_path, preset, expected):
    decode = decode_of(tmp_path, f"model={preset}")
    assert {key: getattr(decode, key) for key in expected} == expected


def test_command_line_decode_keys_win(tmp_path):
    decode = decode_of(tmp_path, "model=llada_8b_instruct", "decode.threshold=1.5", "decode.refresh_interval=null",
                       "decode.early_stop=false")
    assert (decode.threshold, decode.refresh_interval, decode.early_stop) == (1.5, None, False)
    assert decode.block_add_threshold == 0.1  # the rest still from the preset
    assert decode_of(tmp_path, "model=llada_8b_instruct", "model.decode_defaults.threshold=0.7").threshold == 0.7


def test_dream_early_stops_in_its_cache_run_only(tmp_path):
    """method.md §6: Dream's GSM8K no-cache script runs without early stop, its cache script with it."""
    assert decode_of(tmp_path, "model=dream_7b_instruct", "decode.kv_cache=true").early_stop is True
    assert decode_of(tmp_path, "model=dream_7b_instruct").early_stop is False


def test_other_decoders_are_unaffected(tmp_path):
    cfg = compose_at(tmp_path, "model=dream_7b_instruct", "decode=threshold")
    assert load_section(cfg.decode, DecodeConfig, "decode").threshold == compose_at(
        tmp_path, "decode=threshold").decode.threshold
