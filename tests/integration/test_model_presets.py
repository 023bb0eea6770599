"""Real model presets carry their family's d3LLM decoding settings (method.md §6) for decode=d3llm.

conf/decode/d3llm.yaml reads τ, A, D, early stop, d and R through ${decode_default:...}: the preset's
decode_table row for task.name (its `cache:` entries with decode.kv_cache=true), else `model.decode_defaults`
(GSM8K-CoT), else its embedded defaults; a `decode.<key>=` on the command line always wins.
"""

from __future__ import annotations

import pytest
from conftest import compose_at

from d3llm_pipeline.config.schema import DecodeConfig, ModelConfig, load_section

LLADA = {"threshold": 0.5, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": True,
         "cache_delay_iter": 2, "refresh_interval": 3, "temperature": 0.0}
DREAM = {"threshold": 0.4, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": False,
         "cache_delay_iter": 1, "refresh_interval": None, "temperature": 0.0}
EMBEDDED = {"threshold": 0.5, "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "early_stop": True,
            "cache_delay_iter": 1, "refresh_interval": None, "temperature": 0.0}  # d 1: benchmarks/kv_cache.py


def decode_of(tmp_path, *overrides: str) -> DecodeConfig:
    """The validated decode section of `python -m d3llm_pipeline decode=d3llm <overrides>` (a later decode= wins)."""
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


# method.md §6, row by row: what differs from the family's GSM8K-CoT settings (LLADA / DREAM above), without and
# with the KV cache (the scripts' cache runs)
TABLE = [
    ("llada_8b_instruct", "gsm8k_cot", {}, {}),
    ("llada_8b_instruct", "math", {"cache_delay_iter": 1, "refresh_interval": None}, None),
    ("d3llm_llada", "humaneval", {"block_add_threshold": 1.0, "decoded_token_threshold": 1.0, "early_stop": False,
                                  "refresh_interval": 4}, {"early_stop": True}),
    ("dparallel_llada", "mbpp", {"threshold": 0.4, "cache_delay_iter": 1, "refresh_interval": None}, None),
    ("llada_8b_instruct", "long_gsm8k", {"threshold": 0.4, "refresh_interval": None}, None),
    ("dream_7b_instruct", "math", {"cache_delay_iter": 2}, {"early_stop": True}),
    ("d3llm_dream", "humaneval", {"threshold": 0.5, "early_stop": True, "cache_delay_iter": 2, "temperature": 0.1},
     None),
    ("dream_7b_instruct", "mbpp", {"cache_delay_iter": 2}, {"threshold": 0.45, "early_stop": True}),
    ("dream_7b_instruct", "long_gsm8k", {"temperature": 0.1}, {"threshold": 0.45, "early_stop": True,
                                                               "temperature": 0.0}),
]


@pytest.mark.parametrize("preset,task,plain,cached", TABLE)
def test_per_benchmark_rows(tmp_path, preset, task, plain, cached):
    base = LLADA if "llada" in preset else DREAM
    for kv_cache, changes in ((False, plain), (True, {**plain, **(cached or {})})):
        decode = decode_of(tmp_path, f"model={preset}", f"task={task}", "stage=eval", f"decode.kv_cache={kv_cache}")
        want = {**base, **({"early_stop": True} if kv_cache and base is DREAM else {}), **changes}
        assert {key: getattr(decode, key) for key in base} == want, (task, kv_cache)


def test_a_command_line_key_still_wins_over_a_task_row(tmp_path):
    decode = decode_of(tmp_path, "model=llada_8b_instruct", "task=mbpp", "stage=eval", "decode.threshold=0.9")
    assert (decode.threshold, decode.cache_delay_iter) == (0.9, 1)


def test_a_misspelt_table_key_is_one_error(tmp_path):
    from d3llm_pipeline.errors import ConfigError

    cfg = compose_at(tmp_path, "model=llada_8b_instruct", "+model.decode_table.mbpp.treshold=0.3")
    with pytest.raises(ConfigError, match=r"model.decode_table.mbpp has unknown key\(s\) \['treshold'\]"):
        load_section(cfg.model, ModelConfig, "model")
