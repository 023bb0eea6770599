"""lm-eval's CLI model decodes each task with the model preset's decode_table row (method.md §6), as stage=eval does.

`lm_eval --model d3llm --model_args preset=d3llm_llada,decode=d3llm --tasks d3llm_humaneval_chat,d3llm_mbpp`: each
lm-eval task maps to the pipeline task that runs it (conf/task/*.yaml), whose row of conf/decode_table/ sets its
knobs. Checked against the Hydra-composed decode section of the same model, task and kv_cache.
"""

from __future__ import annotations

import pytest
from test_model_presets import TABLE, decode_of

from d3llm_pipeline.decoding import DecodeSpec
from d3llm_pipeline.lmeval.presets import SPEC_FIELDS, decode_knobs, model_preset, table_task

pytest.importorskip("lm_eval")


@pytest.mark.parametrize("lmeval_task,task", [
    ("d3llm_gsm8k_cot_zeroshot", "gsm8k_cot"), ("d3llm_gsm8k", "long_gsm8k"), ("d3llm_minerva_math", "math"),
    ("d3llm_humaneval", "humaneval"), ("d3llm_humaneval_chat", "humaneval"), ("d3llm_humaneval_instruct", "humaneval"),
    ("d3llm_mbpp", "mbpp"), ("hellaswag", None), (None, None),
])
def test_lmeval_tasks_map_to_the_pipeline_task_running_them(lmeval_task, task):
    assert table_task(lmeval_task) == task


@pytest.mark.parametrize("preset,task", [(preset, task) for preset, task, _, _ in TABLE])
def test_the_lmeval_knobs_are_the_composed_decode_section(tmp_path, preset, task):
    settings = model_preset(preset)
    for kv_cache in (False, True):
        composed = decode_of(tmp_path, f"model={preset}", f"task={task}", "stage=eval", f"decode.kv_cache={kv_cache}")
        knobs = decode_knobs("d3llm", settings, task=task, overrides={"kv_cache": kv_cache})
        assert knobs == {k: getattr(composed, k) for k in knobs}, (task, kv_cache)
        assert set(knobs) == set(SPEC_FIELDS) - {"gen_length", "max_forwards"}  # max_forwards: no decode preset key


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
