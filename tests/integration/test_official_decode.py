"""Decoding equals the official d3LLM code, token for token and forward for forward, on the official fixtures.

`tests/fixtures/official/{llada_tiny,dream_tiny}/reference/decode.json` holds what the official decoders returned
(hao-ai-lab/d3LLM@e5bfcac, float32 from the bf16 weights, batch 1, temperature 0, early stop off): 33 LLaDA cases
(`generate` with τ and vanilla, `generate_multi_block`, `generate_multi_block_kv_cache`) and 30 Dream cases
(`diffusion_generate` entropy_threshold, `generate_multi_block` with and without cache). We load the checkpoints
in float32 and decode with the settings each case type needs:

* single-block threshold and vanilla: the defaults (the family's H <= τ / H < τ comes with the model);
* multi-block without cache: the defaults (the family's acceptance rule), entropies in float64 as the official
  code computes them (float32 matched every case here too, but two candidates can differ by less than it resolves);
* multi-block with the cache: the defaults too (`cache_plan` defaults to "reference", the family's official
  forward plan; `cache_plan="ours"` differs, docs/decoding.md).

Every case at batch 1, and the 3 prompts of each (method, params) decoded together in one batch.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import OFFICIAL

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.models.families import load_model

FAMS = ("llada", "dream")
NEVER = 10000  # the official code's "off" for cache_delay_iter / refresh_interval


def reference(fam: str) -> dict:
    return json.loads((OFFICIAL / f"{fam}_tiny" / "reference" / "decode.json").read_text())


def case_type(case: dict) -> str:
    """threshold | vanilla | multi_block | multi_block_cache."""
    params = case["params"]
    if case["method"] in ("generate", "diffusion_generate"):
        return "vanilla" if params["threshold"] is None else "threshold"
    return "multi_block_cache" if params.get("cache_delay_iter", NEVER) < NEVER else "multi_block"


def spec_for(ref: dict, case: dict) -> DecodeSpec:
    """Our decoder settings for an official call, with what its case type needs to reproduce it exactly."""
    params, kind = case["params"], case_type(case)
    base = {"gen_length": ref["gen_len"], "block_size": ref["block_size"], "early_stop": False}
    if kind == "vanilla":  # LLaDA `generate`, steps = gen_len: one most-confident token per forward
        return DecodeSpec(rule="vanilla", score="confidence", tokens_per_step=1, **base)
    if kind == "threshold":
        return DecodeSpec(rule="threshold", score="entropy", threshold=params["threshold"], **base)
    cached = kind == "multi_block_cache"
    refresh = params.get("refresh_interval", NEVER)
    return DecodeSpec(rule="d3llm", score="entropy", threshold=params["threshold"],
                      block_add_threshold=params["block_add_threshold"],
                      decoded_token_threshold=params["decoded_token_threshold"], entropy_dtype="float64",
                      kv_cache=cached, cache_delay_iter=params.get("cache_delay_iter", 2),
                      refresh_interval=None if refresh >= NEVER else refresh, **base)


def all_cases() -> list:
    out = []
    for fam in FAMS:
        for i, case in enumerate(reference(fam)["cases"]):
            label = f"{fam}-{i:02d}-{case_type(case)}-tau{case['params']['threshold']}-p{case['prompt_index']}"
            out.append(pytest.param(fam, i, id=label))
    return out


def all_groups() -> list:
    """(family, indices of the cases sharing a (method, params)): one batched decode each."""
    out = []
    for fam in FAMS:
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(reference(fam)["cases"]):
            groups.setdefault(case["method"] + json.dumps(case["params"], sort_keys=True), []).append(i)
        for n, idx in enumerate(groups.values()):
            out.append(pytest.param(fam, idx, id=f"{fam}-{n:02d}-{case_type(reference(fam)['cases'][idx[0]])}"))
    return out


@pytest.fixture(scope="module")
def setup():
    """family -> (fp32 adapter, decode.json), loaded once per module."""
    return {fam: (load_model(OFFICIAL / f"{fam}_tiny", fam, dtype="float32")[0], reference(fam)) for fam in FAMS}


def test_the_fixtures_cover_every_case_type():
    kinds = {fam: sorted({case_type(c) for c in reference(fam)["cases"]}) for fam in FAMS}
    assert kinds == {"llada": ["multi_block", "multi_block_cache", "threshold", "vanilla"],
                     "dream": ["multi_block", "multi_block_cache", "threshold"]}
    assert [len(reference(fam)["cases"]) for fam in FAMS] == [33, 30]


@pytest.mark.parametrize(("fam", "index"), all_cases())
def test_each_case_equals_the_official_decoder(setup, fam, index):
    lm, ref = setup[fam]
    case = ref["cases"][index]
    prompt = torch.tensor(ref["prompt_ids"][case["prompt_index"]])[None]  # (1, 24)
    result = decode(lm, prompt, spec_for(ref, case))
    assert result.sequences[0, prompt.shape[1]:].tolist() == case["output_ids"]
    assert int(result.nfe[0]) == case["nfe"]


@pytest.mark.parametrize(("fam", "indices"), all_groups())
def test_the_prompts_decoded_in_one_batch_equal_the_official_decoder(setup, fam, indices):
    lm, ref = setup[fam]
    cases = [ref["cases"][i] for i in indices]
    prompts = torch.tensor([ref["prompt_ids"][c["prompt_index"]] for c in cases])  # (3, 24)
    result = decode(lm, prompts, spec_for(ref, cases[0]))
    for row, case in enumerate(cases):
        assert result.sequences[row, prompts.shape[1]:].tolist() == case["output_ids"], case["prompt_index"]
        assert int(result.nfe[row]) == case["nfe"], case["prompt_index"]
