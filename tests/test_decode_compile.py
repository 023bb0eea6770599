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
    from omegaconf import open_dict

    from d3llm_pipeline import artifacts
    from d3llm_pipeline.config.schema import ModelConfig, load_section
    from d3llm_pipeline.config.stage_schemas import TrajectoryStageConfig
    from d3llm_pipeline.config.task_schema import load_task
    from d3llm_pipeline.stages.trajectory import _run_fingerprint

    cfg = compose_at(tmp_path, "stage=trajectory")
    model, task = load_section(cfg.model, ModelConfig, "model"), load_task(cfg.task)
    stage = load_section(cfg.stage, TrajectoryStageConfig, "stage")
    spec = SPECS["threshold"]
    assert _run_fingerprint(model, task, replace(spec, compile=True), stage) == _run_fingerprint(model, task, spec,
                                                                                               stage)
    evals = [compose_at(tmp_path, "stage=eval", f"decode.compile={c}") for c in ("false", "true")]
    older = compose_at(tmp_path, "stage=eval")
    with open_dict(older):
        del older.decode["compile"]  # a config from before the knob
    requests = [artifacts.eval_request(c, model_fp="m") for c in (*evals, older)]
    assert requests[0] == requests[2] != requests[1]
