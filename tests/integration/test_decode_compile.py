"""decode.compile=true: the decoders' forwards go through torch.compile(model, dynamic=True) and decode exactly the
same tokens, in the same forwards, as eager; the module itself (parameters, state_dict keys) is untouched and
grad-enabled forwards (training) stay eager. On CPU (inductor); the speed is measured by benchmarks/gpu_decode.py
--compile, not here. Compiling costs ~10-20 s per decoder on 2 cores, hence one small model for all cases.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.models.tiny import build_tiny_teacher

SPECS = {
    "vanilla": DecodeSpec(gen_length=32, block_size=8, rule="vanilla", score="confidence", tokens_per_step=2),
    "threshold": DecodeSpec(gen_length=32, block_size=8, rule="threshold", threshold=2.0),
    "d3llm+cache": DecodeSpec(gen_length=32, block_size=8, rule="d3llm", threshold=2.0, kv_cache=True,
                              cache_delay_iter=1, refresh_interval=3),
}


@pytest.fixture(scope="module")
def models(tokenizer_module):
    eager = build_tiny_teacher(tokenizer_module, max_positions=48, n_embd=32, n_layer=1, n_head=2, seed=0).eval()
    compiled = build_tiny_teacher(tokenizer_module, max_positions=48, n_embd=32, n_layer=1, n_head=2, seed=0).eval()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.fixture(scope="module")
def tokenizer_module():
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_compiled_decoding_equals_eager(models, tokenizer_module, name):
    eager, compiled = models
    keys = set(compiled.state_dict())
    prompts = torch.randint(3, len(tokenizer_module), (3, 16), generator=torch.Generator().manual_seed(1))
    spec = SPECS[name]
    want = decode(eager, prompts, spec)
    got = decode(compiled, prompts, replace(spec, compile=True))
    assert compiled._compiled is not None and eager._compiled is None
    for field in ("sequences", "nfe", "unmask_step"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert int(want.nfe.max()) > 1  # several forwards of changing shapes went through the compiled graph
    assert set(compiled.state_dict()) == keys  # not a submodule: checkpoints and resumption see the same keys


def test_grad_enabled_forwards_stay_eager(models):
    _, compiled = models
    compiled.compile_forward()
    ids = torch.randint(3, 15, (2, 12), generator=torch.Generator().manual_seed(0))
    calls = []
    original = compiled._compiled
    object.__setattr__(compiled, "_compiled", lambda **kw: calls.append(1) or original(**kw))
    try:
        loss = compiled.logits(ids).float().logsumexp(-1).mean()  # grad enabled: the eager module
        loss.backward()
        assert not calls and any(p.grad is not None for p in compiled.parameters())
        with torch.no_grad():
            compiled.logits(ids)
        assert calls == [1]
    finally:
        object.__setattr__(compiled, "_compiled", original)
        compiled.zero_grad(set_to_none=True)


def test_compile_keeps_artifact_identities(tmp_path):
    """decode.compile changes how the forward runs, not what it computes: trajectory chunks and finished evals
    written before the knob existed stay valid (a compiled eval is its own request: its tokens/s differ)."""
    from conftest import compose_at
    from omegaconf import OmegaConf

    from d3llm_pipeline import artifacts
    from d3llm_pipeline.config.schema import ModelConfig, load_section, load_task
    from d3llm_pipeline.config.stage_schemas import TrajectoryStageConfig
    from d3llm_pipeline.stages.trajectory import _run_fingerprint

    cfg = compose_at(tmp_path, "stage=trajectory")
    model, task = load_section(cfg.model, ModelConfig, "model"), load_task(cfg.task)
    stage = load_section(cfg.stage, TrajectoryStageConfig, "stage")
    spec = SPECS["threshold"]
    assert _run_fingerprint(model, task, replace(spec, compile=True), stage) == _run_fingerprint(model, task, spec,
                                                                                               stage)
    evals = [compose_at(tmp_path, "stage=eval", f"decode.compile={c}") for c in ("false", "true")]
    # a config from before the knob (plain: the composed decode section is a structured config, keys fixed)
    older = OmegaConf.create(OmegaConf.to_container(compose_at(tmp_path, "stage=eval"), resolve=True))
    del older.decode["compile"]
    requests = [artifacts.eval_request(c, model_fp="m") for c in (*evals, older)]
    assert requests[0] == requests[2] != requests[1]


def test_the_compiling_decode_is_a_separate_untimed_warm_up(tokenizer_module, monkeypatch):
    """stage=eval with decode.compile: the first batch is decoded once more before the clock starts (compiling
    happens there), so wall_s and tokens/s are the compiled speed; the records are those of an eager eval.
    (Compilation itself is stubbed here: what is checked is where the warm-up runs and what it leaves.)"""
    from d3llm_pipeline import evaluation
    from d3llm_pipeline.lmeval.tasks.arith.arith_task import arith_problems
    from d3llm_pipeline.models.adapter import HFDiffusionAdapter
    from d3llm_pipeline.tasks.arith import ArithTask

    lm = build_tiny_teacher(tokenizer_module, max_positions=88, n_embd=32, n_layer=1, n_head=2, seed=0).eval()
    problems = arith_problems(arith_n=6)
    spec = DecodeSpec(gen_length=64, block_size=16, rule="threshold", threshold=2.0)
    calls: list[int] = []

    def counted(model, prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return decode(model, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(evaluation, "decode", counted)
    monkeypatch.setattr(HFDiffusionAdapter, "compile_forward", lambda self: None)
    eager_records, eager = evaluation.evaluate_problems(lm, tokenizer_module, problems, spec, ArithTask(), 4, progress=False)
    assert calls == [4, 2] and "compile_warmup_s" not in eager
    calls.clear()
    records, summary = evaluation.evaluate_problems(lm, tokenizer_module, problems, replace(spec, compile=True),
                                                    ArithTask(), 4, progress=False)
    assert calls == [4, 4, 2] and summary["compile_warmup_s"] >= 0  # the warm-up: the first batch, once more
    assert records == eager_records and summary["total_nfe"] == eager["total_nfe"]


def test_the_lmeval_model_warms_up_once_too(tokenizer_module, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from d3llm_pipeline import evaluation
    from d3llm_pipeline.lmeval import D3LLMEvalModel
    from d3llm_pipeline.lmeval.tasks.arith.arith_task import arith_problems
    from d3llm_pipeline.models.adapter import HFDiffusionAdapter

    lm = build_tiny_teacher(tokenizer_module, max_positions=88, n_embd=32, n_layer=1, n_head=2, seed=0).eval()
    warm_ups: list[int] = []
    monkeypatch.setattr(evaluation, "decode", lambda model, ids, *a, **k: warm_ups.append(len(ids)) or
                        decode(model, ids, *a, **k))
    monkeypatch.setattr(HFDiffusionAdapter, "compile_forward", lambda self: None)
    model = D3LLMEvalModel(lm=lm, tokenizer=tokenizer_module, decode="threshold", compile=True, batch_size=2)
    reqs = [Instance("generate_until", {}, (p.prompt, {"until": ["[EOS]"], "max_gen_toks": 64}), 0,
                     metadata=("arith", i, 1)) for i, p in enumerate(arith_problems(arith_n=5))]
    model.generate_until(reqs)
    model.generate_until(reqs[:2])
    assert warm_ups == [2] and len(model.stats) == 7  # one warm-up (a first batch), never counted in the stats
