"""CUDA checks (`make test-gpu` = pytest -m gpu): skipped without a GPU, so `make test` runs none of them.

* the fixtures' forward on CUDA equals the official reference (computed in float32 on a CPU): float32 within the
  CPU test's tolerances (tests/integration/test_families.py), bf16 within bf16 tolerances;
* the official decode cases on CUDA (float32 model; the CPU parity test's settings, tests/integration/test_official_decode.py)
  give the reference ids and NFE;
* batched == one-by-one on CUDA for every decoder, and the cached decoder with a refresh every iteration equals
  the uncached one (float64 model: no rounding ties);
* at most one host sync per forward on CUDA, counted on the real device (decoding/sync_counter.py);
* decode.compile=true on CUDA decodes what eager does (float64 model);
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import OFFICIAL
from test_host_syncs import DECODERS as SYNC_DECODERS

from d3llm_pipeline.decoding import decode
from d3llm_pipeline.decoding.sync_counter import SyncCounter

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
FAMS = ["llada", "dream"]
DECODERS = {k: v for k, v in SYNC_DECODERS.items() if k != "d3llm+cache reference"}  # the CPU sync tests' specs


def stats(logits: torch.Tensor):
    x = logits.double()
    lse = x.logsumexp(-1)
    logp = x - lse[:, None]
    return x.argmax(-1), -(logp.exp() * logp).sum(-1), lse


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fixture_forward_on_cuda_matches_the_reference(family, dtype):
    from safetensors.torch import load_file

    from d3llm_pipeline.models.families import load_model

    lm, _ = load_model(OFFICIAL / f"{family}_tiny", family, dtype=dtype, device="cuda")
    ref = load_file(str(OFFICIAL / f"{family}_tiny" / "reference" / "forward.safetensors"))
    for name in ("masked", "half"):
        with torch.no_grad():
            raw = lm.model(input_ids=ref[f"{name}/input_ids"][None].to(CUDA)).logits[0].float().cpu()
        argmax, entropy, lse = stats(raw)
        d_entropy = (entropy - ref[f"{name}/entropy"].double()).abs()
        d_lse = (lse - ref[f"{name}/logsumexp"].double()).abs()
        if dtype == "float32":
            assert torch.equal(argmax, ref[f"{name}/argmax"])
            assert d_entropy.max() < 1e-3 and d_lse.max() < 1e-3
        else:  # bf16 weights and activations: ~3 significant digits per op
            assert (argmax == ref[f"{name}/argmax"]).float().mean() >= 0.9
            assert d_entropy.mean() < 0.05 and d_lse.mean() < 0.05 * ref[f"{name}/logsumexp"].abs().mean()


@pytest.mark.parametrize("family", FAMS)
def test_official_decode_cases_on_cuda(family):
    from test_official_decode import case_type, spec_for

    from d3llm_pipeline.models.families import load_model

    lm, _ = load_model(OFFICIAL / f"{family}_tiny", family, dtype="float32", device="cuda")
    ref = json.loads((OFFICIAL / f"{family}_tiny" / "reference" / "decode.json").read_text())
    wrong = []
    for i, case in enumerate(ref["cases"]):
        prompt = torch.tensor(ref["prompt_ids"][case["prompt_index"]], device=CUDA)[None]  # (1, 24)
        out = decode(lm, prompt, spec_for(ref, case))  # the CPU parity test's settings (float64 where it uses it)
        if out.sequences[0, prompt.shape[1]:].tolist() != case["output_ids"] or int(out.nfe[0]) != case["nfe"]:
            wrong.append(f"{i}:{case_type(case)}")
    assert not wrong, f"cases not exact on CUDA: {wrong}"


@pytest.fixture(scope="module")
def cuda_lm(gpt2_lm):
    import copy

    return copy.deepcopy(gpt2_lm).to(CUDA)  # float64: batched and one-by-one cannot part on a rounding tie


@pytest.mark.parametrize("name", list(DECODERS))
def test_batched_equals_one_by_one_on_cuda(cuda_lm, prompts, name):
    prompts = prompts.to(CUDA)
    batched = decode(cuda_lm, prompts, DECODERS[name])
    for i in range(len(prompts)):
        alone = decode(cuda_lm, prompts[i : i + 1], DECODERS[name])
        assert torch.equal(alone.sequences[0], batched.sequences[i]) and torch.equal(alone.nfe[0], batched.nfe[i])


def test_cache_with_refresh_every_iteration_equals_no_cache_on_cuda(cuda_lm, prompts):
    prompts = prompts.to(CUDA)
    plain = decode(cuda_lm, prompts, DECODERS["d3llm"])
    cached = decode(cuda_lm, prompts, replace(DECODERS["d3llm+cache"], refresh_interval=1, cache_plan="ours"))
    assert torch.equal(plain.sequences, cached.sequences) and torch.equal(plain.nfe, cached.nfe)


@pytest.mark.parametrize("name", list(DECODERS))
def test_at_most_one_host_sync_per_forward_on_cuda(cuda_lm, prompts, name):
    prompts = prompts.to(CUDA)
    decode(cuda_lm, prompts, DECODERS[name])  # warm-up (lazy CUDA init reads the device once)
    with SyncCounter("cuda") as syncs:
        result = decode(cuda_lm, prompts, DECODERS[name])
    assert syncs.total <= int(result.nfe.max()), syncs.events


@pytest.mark.parametrize("name", ["threshold", "d3llm+cache"])
def test_compiled_decoding_equals_eager_on_cuda(cuda_lm, prompts, name):
    import copy

    prompts = prompts.to(CUDA)
    compiled = copy.deepcopy(cuda_lm)  # compile_forward stays with the model: keep the shared one eager
    want = decode(cuda_lm, prompts, DECODERS[name])
    got = decode(compiled, prompts, replace(DECODERS[name], compile=True))
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got.nfe, want.nfe)
