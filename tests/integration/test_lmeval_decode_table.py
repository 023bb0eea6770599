"""lm-eval's CLI model decodes each task with the model preset's decode_table row (method.md §6), as stage=eval does.

`lm_eval --model d3llm --model_args preset=d3llm_llada,decode=d3llm --tasks d3llm_humaneval_chat,d3llm_mbpp`: each
lm-eval task maps to the pipeline task that runs it (conf/task/*.yaml), whose row of conf/decode_table/ sets its
knobs. Checked against the Hydra-composed decode section of the same model, task and kv_cache.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_model_presets import TABLE, decode_of

from d3llm_pipeline.config.decode_presets import pipeline_task_of, resolve_decode
from d3llm_pipeline.decoding import DecodeSpec

pytest.importorskip("lm_eval")

SPEC_FIELDS = [f.name for f in dataclasses.fields(DecodeSpec)]
# lm-eval task -> the pipeline task whose decode_table row it uses (one per §6 row; None: none, decode_defaults)
LMEVAL_TASKS = {"d3llm_gsm8k_cot_zeroshot": "gsm8k_cot", "d3llm_gsm8k": "long_gsm8k", "d3llm_minerva_math": "math",
                "d3llm_humaneval": "humaneval", "d3llm_humaneval_chat": "humaneval",
                "d3llm_humaneval_instruct": "humaneval", "d3llm_mbpp": "mbpp"}


@pytest.mark.parametrize("lmeval_task,task", [*LMEVAL_TASKS.items(), ("hellaswag", None), (None, None)])
def test_lmeval_tasks_map_to_the_pipeline_task_running_them(lmeval_task, task):
    assert pipeline_task_of(lmeval_task) == task


@pytest.fixture(scope="module")
def tiny_lm():
    from d3llm_pipeline.models.tiny import build_tiny_teacher
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer()
    return build_tiny_teacher(tok, max_positions=320, n_embd=16, n_layer=1, n_head=2, seed=0), tok


@pytest.mark.parametrize("decoder", ["vanilla", "threshold", "d3llm"])
@pytest.mark.parametrize("preset,task", sorted({(preset, task) for preset, task, _, _ in TABLE}))
def test_the_lmeval_spec_is_the_stage_eval_spec(tmp_path, tiny_lm, preset, task, decoder):
    """One resolution: for every decoder x model preset x §6 row, with and without the cache, the spec the lm-eval
    model decodes an lm-eval task with is the spec `stage=eval model=<preset> task=<task> decode=<decoder>` gets."""
    from d3llm_pipeline.lmeval import D3LLMEvalModel

    lm, tok = tiny_lm
    lmeval_task = next(name for name, row in LMEVAL_TASKS.items() if row == task)
    for kv_cache in (False, True) if decoder == "d3llm" else (False,):
        composed = decode_of(tmp_path, f"model={preset}", f"task={task}", "stage=eval", f"decode={decoder}",
                             f"decode.kv_cache={kv_cache}")
        model = D3LLMEvalModel(lm=lm, tokenizer=tok, preset=preset, decode=decoder, kv_cache=kv_cache)
        spec = model.spec_for(composed.gen_length, lmeval_task)
        assert dataclasses.asdict(spec) == {k: getattr(composed, k) for k in SPEC_FIELDS}, (task, kv_cache)
        assert resolve_decode(decoder, preset, task, {"kv_cache": kv_cache}) == composed


def test_each_task_of_one_lmeval_run_decodes_with_its_row(monkeypatch):
    from lm_eval.api.instance import Instance

    from d3llm_pipeline.lmeval import D3LLMEvalModel
    from d3llm_pipeline.models.tiny import build_tiny_teacher
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer()
    lm = build_tiny_teacher(tok, max_positions=96, n_embd=16, n_layer=1, n_head=2, seed=0)
    model = D3LLMEvalModel(lm=lm, tokenizer=tok, preset="d3llm_llada", decode="d3llm", refresh_interval=5)
    seen: dict[str, DecodeSpec] = {}

    def record(requests, spec):
        seen.update({r.task_name: spec for r in requests})
        return ["" for _ in requests]

    monkeypatch.setattr(model, "_decode_batch", record)
    tasks = ("d3llm_humaneval_chat", "d3llm_mbpp", "d3llm_gsm8k_cot_zeroshot", "hellaswag")
    model.generate_until([Instance("generate_until", {}, ("1 + 1 =", {"until": [], "max_gen_toks": 64}), 0,
                                   metadata=(t, 0, 1)) for t in tasks])
    assert seen["d3llm_humaneval_chat"].block_add_threshold == 1.0  # one block at a time (§6 HumanEval)
    assert seen["d3llm_mbpp"].threshold == 0.4 and seen["d3llm_mbpp"].cache_delay_iter == 1
    assert seen["d3llm_gsm8k_cot_zeroshot"].threshold == 0.5 == seen["hellaswag"].threshold  # decode_defaults
    assert {spec.refresh_interval for spec in seen.values()} == {5}  # the user's knob wins over every row
    assert {spec.gen_length for spec in seen.values()} == {64}
