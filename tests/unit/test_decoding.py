"""Tests for d3llm_pipeline.decoding: selection rules, the semi-AR block decoder and TPF accounting.

Known-answer cases run on `FakeLM`, whose logits are prescribed per sample; batching, limit and invariant
checks run on a tiny randomly initialised bidirectional GPT-2 (float64) behind `HFDiffusionAdapter`.
"""

from __future__ import annotations

import math

import pytest
import torch

from d3llm_pipeline.decoding import (
    DecodeSpec,
    decode,
    generated_token_counts,
    predict,
    select_threshold,
    select_vanilla,
    tokens_per_forward,
)
from d3llm_pipeline.models.adapter import DiffusionLM, HFDiffusionAdapter

MASK, EOS, PAD, VOCAB = 1, 2, 0, 20


# ----------------------------------------------------------------------------------------------- models
class FakeLM:
    """Returns fixed logits chosen by the first prompt token (the sample id), whatever else the input is.

    table: (num_ids, G, V) logits for the generation region; prompt positions get zeros. Every call's
    input ids and attention mask are recorded so tests can check what the decoder sent to the model.
    """

    mask_token_id, eos_token_id, pad_token_id, shift_logits = MASK, EOS, PAD, False

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # (num_ids, G, V)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((input_ids.clone(), None if attention_mask is None else attention_mask.clone()))
        gen = self.table[input_ids[:, 0]]  # (A, G, V)
        prompt = torch.zeros(input_ids.shape[0], input_ids.shape[1] - gen.shape[1], VOCAB)
        full = torch.cat([prompt, gen], dim=1)  # (A, L, V)
        return full if keep is None else full[keep]  # (n, V) for the kept positions


def peaked(rows: list[list[tuple[int, float]]]) -> torch.Tensor:
    """Table (num_ids, G, V): at each position logit `s` on `token`, 0 elsewhere."""
    table = torch.zeros(len(rows), len(rows[0]), VOCAB)
    for b, row in enumerate(rows):
        for i, (tok, s) in enumerate(row):
            table[b, i, tok] = s
    return table


def prompts_for(ids: list[int], length: int = 3) -> torch.Tensor:
    """Prompts (B, length) whose first token selects FakeLM's table row."""
    p = torch.full((len(ids), length), 7, dtype=torch.long)
    p[:, 0] = torch.tensor(ids)
    return p


def assert_same(a, b) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.nfe, b.nfe)
    assert torch.equal(a.unmask_step, b.unmask_step)
    assert torch.equal(a.tokens, b.tokens)


# ----------------------------------------------------------------------------------- selection rules
def reference_predict(logits: torch.Tensor, banned: list[int]) -> tuple[torch.Tensor, ...]:
    """The plain definition in float64: softmax over the allowed ids, its argmax, max and Shannon entropy."""
    z = logits.double().clone()
    z[..., banned] = float("-inf")
    p = torch.softmax(z, dim=-1)
    confidence, tokens = p.max(dim=-1)
    return tokens, confidence, torch.special.entr(p).sum(dim=-1)


@pytest.mark.parametrize("vocab", [20, 32000])
def test_predict_equals_the_plain_definition_on_large_vocabularies(vocab):
    # 20 rows of 32k: the CPU path works in chunks of 8 rows and uses the blocked max; both must be invisible.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, vocab, generator=g) * torch.tensor([0.5, 2.0, 4.0, 8.0])[:, None, None]
    tokens, confidence, entropy = reference_predict(logits, [MASK, PAD])
    pred = predict(logits, banned_ids=[MASK, PAD])
    assert pred.tokens.shape == (4, 5) and torch.equal(pred.tokens, tokens)
    assert torch.allclose(pred.confidence.double(), confidence, atol=1e-6)
    assert torch.allclose(pred.entropy.double(), entropy, atol=2e-5)
    assert torch.equal(logits, torch.randn(4, 5, vocab, generator=torch.Generator().manual_seed(0))
                       * torch.tensor([0.5, 2.0, 4.0, 8.0])[:, None, None])  # not consumed: input untouched


def test_predict_breaks_token_ties_towards_the_lowest_id_across_runs():
    logits = torch.zeros(2, 32000)
    logits[0, [700, 70, 31999]] = 5.0  # three equal maxima in different runs of 64
    logits[1, [130, 129]] = 3.0  # two equal maxima inside one run
    assert predict(logits).tokens.tolist() == [70, 129]


def test_predict_never_picks_banned_and_scores_by_hand() -> None:
    logits = torch.tensor([[0.0, 5.0, 0.0, math.log(3.0)]])  # MASK=1 has the largest logit
    pred = predict(logits, banned_ids=[MASK, PAD])
    assert pred.tokens.tolist() == [3]
    # Allowed tokens {2, 3} with weights {1, 3}: p = (1/4, 3/4).
    assert pred.confidence.item() == pytest.approx(0.75)
    assert pred.entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)
    assert pred.confidence.dtype == torch.float32


def test_select_vanilla_ties_go_to_lowest_position_and_respect_candidates() -> None:
    score = torch.tensor([[0.5, 0.9, 0.9, 0.9, 0.1]])
    cand = torch.tensor([[True, False, True, True, True]])
    assert select_vanilla(score, cand, 1, higher_better=True).tolist() == [[False, False, True, False, False]]
    assert select_vanilla(score, cand, 2, True).tolist() == [[False, False, True, True, False]]
    assert select_vanilla(score, cand, 1, False).tolist() == [[False, False, False, False, True]]
    # More slots than candidates: only the candidates are accepted.
    few = torch.tensor([[False, True, False, False, False]])
    assert select_vanilla(score, few, 3, True).tolist() == few.tolist()


def test_select_threshold_always_accepts_the_best() -> None:
    score = torch.tensor([[0.3, 0.2, 0.6, 0.7], [0.1, 0.2, 0.3, 0.35]])
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = select_threshold(score, cand, 0.5, higher_better=True)
    assert got.tolist() == [[False, False, True, False], [False, False, False, True]]
    got = select_threshold(score, cand, 0.25, higher_better=False)
    assert got.tolist() == [[False, True, False, False], [True, True, False, False]]
    # A score equal to the threshold passes only when inclusive (LLaDA's official H <= τ; Dream's is H < τ).
    tie = torch.tensor([[0.1, 0.25, 0.25, 0.9]])
    everyone = torch.ones_like(tie, dtype=torch.bool)
    assert select_threshold(tie, everyone, 0.25, False).tolist() == [[True, False, False, False]]
    assert select_threshold(tie, everyone, 0.25, False, inclusive=True).tolist() == [[True, True, True, False]]


def test_predict_in_float64_agrees_with_float32_and_the_definition() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 32000, generator=g) * 6.0
    tokens, confidence, entropy = reference_predict(logits, [MASK, PAD])
    wide, narrow = predict(logits, [MASK, PAD], dtype="float64"), predict(logits, [MASK, PAD])
    assert wide.entropy.dtype == wide.confidence.dtype == torch.float64
    assert torch.equal(wide.tokens, tokens) and torch.equal(wide.tokens, narrow.tokens)
    assert torch.allclose(wide.entropy, entropy, atol=1e-9, rtol=0)  # the float32 path: within 2e-5
    assert torch.allclose(wide.confidence, confidence, atol=1e-12, rtol=0)


def test_accept_global_best_null_follows_the_model_family() -> None:
    from d3llm_pipeline.models.families import DecodeDefaults, get_family

    class Plain:  # a model without family defaults gets the tiny family's rule
        pass

    llada, dream = Plain(), Plain()
    llada.decode_defaults = get_family("llada").decode_defaults
    dream.decode_defaults = get_family("dream").decode_defaults
    unset = DecodeSpec(rule="d3llm")
    assert unset.accept_global_best is None
    assert [unset.global_best(m) for m in (llada, dream, Plain())] == [True, False, False]
    assert DecodeSpec(rule="d3llm", accept_global_best=False).global_best(llada) is False
    assert get_family("tiny").decode_defaults == DecodeDefaults()
    assert get_family("llada").decode_defaults.inclusive_threshold and not DecodeDefaults().inclusive_threshold


# ------------------------------------------------------------------------------ decoding, known answers
def test_vanilla_order_and_nfe_by_hand() -> None:
    s = [1.0, 5.0, 3.0, 2.0, 4.0, 6.0, 0.5, 3.0]
    lm = FakeLM(peaked([[(10 + i, v) for i, v in enumerate(s)]]))
    spec = DecodeSpec(gen_length=8, block_size=4, rule="vanilla", score="confidence", early_stop=False)
    res = decode(lm, prompts_for([0]), spec)
    assert res.unmask_step.tolist() == [[3, 0, 1, 2, 5, 4, 7, 6]]
    assert res.nfe.tolist() == [8]
    assert res.sequences[0, 3:].tolist() == list(range(10, 18))
    assert res.tokens.tolist() == [8]
    assert not res.truncated.any()


@pytest.mark.parametrize("score,threshold", [("confidence", 0.5), ("entropy", 1.0)])
def test_threshold_accepts_hand_computed_positions(score: str, threshold: float) -> None:
    # s=5: p ~ 0.90, H ~ 0.62; s=1: p ~ 0.14, H ~ 2.84; s=6: p ~ 0.96 (18 allowed tokens).
    s = [5.0, 1.0, 5.0, 1.0, 6.0, 6.0, 6.0, 6.0]
    lm = FakeLM(peaked([[(10 + i, v) for i, v in enumerate(s)]]))
    spec = DecodeSpec(gen_length=8, block_size=4, score=score, threshold=threshold, early_stop=False)
    res = decode(lm, prompts_for([0]), spec)
    # step 0: both s=5 pass; step 1: nothing passes, best forced (tie -> lowest pos 1); step 2: pos 3;
    # step 3: the whole second block passes at once.
    assert res.unmask_step.tolist() == [[0, 1, 0, 2, 3, 3, 3, 3]]
    assert res.nfe.tolist() == [4]


def test_only_the_current_block_is_revealed() -> None:
    s = [0.1, 0.2, 0.3, 0.4, 9.0, 9.0, 9.0, 9.0]  # block 1 is far more confident than block 0
    lm = FakeLM(peaked([[(10 + i, v) for i, v in enumerate(s)]]))
    spec = DecodeSpec(gen_length=8, block_size=4, score="confidence", threshold=0.5, max_forwards=1)
    res = decode(lm, prompts_for([0]), spec)
    gen = res.sequences[0, 3:]
    assert gen.tolist() == [MASK, MASK, MASK, 13, MASK, MASK, MASK, MASK]
    assert res.truncated.tolist() == [True] and res.nfe.tolist() == [1]
    full = decode(
        lm, prompts_for([0]), DecodeSpec(gen_length=8, block_size=4, score="confidence", threshold=0.5)
    )
    assert full.unmask_step.tolist() == [[3, 2, 1, 0, 4, 4, 4, 4]]


def test_early_stop_fills_after_eos_and_stops_counting() -> None:
    row_eos = [(5, 4.0), (6, 2.0), (EOS, 6.0), (7, 1.0)] + [(8, 3.0)] * 4
    row_plain = [(9, 3.0)] * 8
    lm = FakeLM(peaked([row_eos, row_plain]))
    spec = DecodeSpec(gen_length=8, block_size=4, rule="vanilla", score="confidence")
    res = decode(lm, prompts_for([0, 1]), spec)
    assert res.sequences[0, 3:].tolist() == [5, 6, EOS, EOS, EOS, EOS, EOS, EOS]
    assert res.unmask_step[0].tolist() == [1, 2, 0, 0, 0, 0, 0, 0]
    assert res.nfe.tolist() == [3, 8]
    assert res.tokens.tolist() == [2, 8]
    # Sample 0 left the model batch after its third forward.
    assert [ids.shape[0] for ids, _ in lm.calls] == [2, 2, 2] + [1] * 5
    assert tokens_per_forward(res.tokens, res.nfe) == pytest.approx(10 / 11)

    off = decode(
        lm,
        prompts_for([0, 1]),
        DecodeSpec(gen_length=8, block_size=4, rule="vanilla", score="confidence", early_stop=False),
    )
    assert off.sequences[0, 3:].tolist() == [5, 6, EOS, 7, 8, 8, 8, 8]
    assert off.nfe.tolist() == [8, 8] and off.tokens.tolist() == [2, 8]


def test_early_stop_overwrites_tokens_revealed_before_an_earlier_eos() -> None:
    row = [(5, 9.0), (6, 1.0), (EOS, 5.0), (7, 6.0)] + [(8, 3.0)] * 4
    lm = FakeLM(peaked([row]))
    res = decode(
        lm, prompts_for([0]), DecodeSpec(gen_length=8, block_size=4, rule="vanilla", score="confidence")
    )
    # step 0: pos 0; step 1: pos 3 (token 7); step 2: EOS at pos 2 -> pos 3 overwritten (step kept), rest filled.
    assert res.sequences[0, 3:].tolist() == [5, 6] + [EOS] * 6
    assert res.unmask_step[0].tolist() == [0, 3, 2, 1, 2, 2, 2, 2]
    assert res.nfe.tolist() == [4] and res.tokens.tolist() == [2]


def test_decode_never_writes_mask_or_pad_unless_pad_is_eos() -> None:
    table = peaked([[(MASK, 9.0), (PAD, 9.0), (EOS, 9.0), (5, 1.0)]])
    table[0, :2, 6] = 3.0  # runner-up token behind the banned ids
    lm = FakeLM(table)
    spec = DecodeSpec(gen_length=4, block_size=4, rule="vanilla", score="confidence", early_stop=False)
    res = decode(lm, prompts_for([0]), spec)
    assert res.sequences[0, 3:].tolist() == [6, 6, EOS, 5]
    # When PAD doubles as EOS it must stay predictable, otherwise a model could never stop.
    table = peaked([[(MASK, 9.0), (EOS, 9.0), (EOS, 9.0), (EOS, 9.0)]])
    table[0, 0, 6] = 3.0
    lm_pad_is_eos = FakeLM(table)
    lm_pad_is_eos.pad_token_id = EOS
    assert decode(lm_pad_is_eos, prompts_for([0]), spec).sequences[0, 3:].tolist() == [6, EOS, EOS, EOS]


def test_prompt_attention_mask_is_extended_over_the_generation_region() -> None:
    lm = FakeLM(peaked([[(9, 3.0)] * 4, [(10, 3.0)] * 4]))
    pmask = torch.tensor([[False, True, True], [True, True, True]])
    decode(lm, prompts_for([0, 1]), DecodeSpec(gen_length=4, block_size=4), prompt_attention_mask=pmask)
    _, attn = lm.calls[0]
    assert attn.tolist() == [[False, True, True, True, True, True, True], [True] * 7]


# ------------------------------------------------------------------------------------------ metrics
def test_generated_token_counts_by_hand() -> None:
    gen = torch.tensor([[5, EOS, 7, EOS], [EOS, 3, 3, 3], [4, 4, 4, 4], [4, 4, 4, EOS]])
    assert generated_token_counts(gen, EOS).tolist() == [1, 0, 4, 3]


def test_tokens_per_forward_by_hand_and_errors() -> None:
    assert tokens_per_forward([3, 5], [4, 6]) == pytest.approx(0.8)
    assert tokens_per_forward(torch.tensor([3, 5]), torch.tensor([4, 6])) == pytest.approx(0.8)
    assert tokens_per_forward([0], [7]) == 0.0
    with pytest.raises(ValueError):
        tokens_per_forward([3, 5], [0, 0])
    with pytest.raises(ValueError):
        tokens_per_forward([], [])
    with pytest.raises(ValueError):
        tokens_per_forward([3, 5], [4])


# ------------------------------------------------------------------------------ tiny GPT-2 properties
SPECS = [
    DecodeSpec(
        gen_length=32, block_size=8, rule="vanilla", score="confidence", tokens_per_step=2, early_stop=True
    ),
    DecodeSpec(gen_length=32, block_size=8, rule="vanilla", score="entropy", early_stop=False),
    DecodeSpec(
        gen_length=32, block_size=8, rule="threshold", score="entropy", threshold=2.0, early_stop=True
    ),
    DecodeSpec(
        gen_length=32, block_size=8, rule="threshold", score="confidence", threshold=0.2, early_stop=False
    ),
]


def test_adapter_satisfies_protocol(gpt2_lm: HFDiffusionAdapter) -> None:
    assert isinstance(gpt2_lm, DiffusionLM) and isinstance(FakeLM(torch.zeros(1, 1, VOCAB)), DiffusionLM)


@pytest.mark.parametrize("spec", SPECS)
def test_batched_equals_one_by_one(
    gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor, spec: DecodeSpec
) -> None:
    batched = decode(gpt2_lm, prompts, spec)
    for b in range(prompts.shape[0]):
        alone = decode(gpt2_lm, prompts[b : b + 1], spec)
        assert torch.equal(batched.sequences[b : b + 1], alone.sequences)
        assert torch.equal(batched.nfe[b : b + 1], alone.nfe)
        assert torch.equal(batched.unmask_step[b : b + 1], alone.unmask_step)


def test_the_gpt2_setup_exercises_early_stop(gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor) -> None:
    on = decode(gpt2_lm, prompts, SPECS[2])
    off = decode(gpt2_lm, prompts, DecodeSpec(**{**SPECS[2].__dict__, "early_stop": False}))
    assert torch.equal(on.tokens, off.tokens)
    saved = on.nfe < off.nfe
    assert saved.any() and not saved.all()  # some samples stop early, others run to the end
    assert (on.nfe <= off.nfe).all()


@pytest.mark.parametrize(
    "score,lo,hi", [("entropy", -math.inf, math.inf), ("confidence", math.inf, -math.inf)]
)
@pytest.mark.parametrize("early_stop", [True, False])
def test_threshold_limits_equal_vanilla(
    gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor, score: str, lo: float, hi: float, early_stop: bool
) -> None:
    base = dict(gen_length=32, block_size=8, score=score, early_stop=early_stop)
    # A threshold nothing passes: only the forced best token each step == vanilla with one token per step.
    strict = decode(gpt2_lm, prompts, DecodeSpec(rule="threshold", threshold=lo, **base))
    assert_same(strict, decode(gpt2_lm, prompts, DecodeSpec(rule="vanilla", tokens_per_step=1, **base)))
    # A threshold everything passes: a whole block per forward == vanilla with block_size tokens per step.
    loose = decode(gpt2_lm, prompts, DecodeSpec(rule="threshold", threshold=hi, **base))
    assert_same(loose, decode(gpt2_lm, prompts, DecodeSpec(rule="vanilla", tokens_per_step=8, **base)))
    if not early_stop:
        assert strict.nfe.tolist() == [32] * 5
        assert loose.nfe.tolist() == [4] * 5
    else:
        assert (loose.nfe <= 4).all()


@pytest.mark.parametrize("spec", SPECS)
def test_invariants(gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor, spec: DecodeSpec) -> None:
    res = decode(gpt2_lm, prompts, spec)
    P, G = prompts.shape[1], spec.gen_length
    gen = res.sequences[:, P:]
    assert res.sequences.shape == (5, P + G)
    assert torch.equal(res.sequences[:, :P], prompts)
    assert not (gen == MASK).any() and not res.truncated.any()
    assert ((res.unmask_step >= 0) & (res.unmask_step < res.nfe[:, None])).all()
    assert torch.equal(res.tokens, generated_token_counts(gen, EOS))
    # Each block needs its own forward: blocks up to (and including) the first EOS's when stopping early,
    # every block otherwise.
    first_eos_block = torch.where(res.tokens < G, res.tokens // spec.block_size + 1, spec.num_blocks)
    needed = first_eos_block if spec.early_stop else torch.full_like(res.nfe, spec.num_blocks)
    assert (res.nfe >= needed).all()
    # Every step reveals at least one token, so nfe never exceeds the number of positions.
    assert (res.nfe <= G).all()


def test_ones_attention_mask_matches_none(gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor) -> None:
    spec = SPECS[2]
    ones = torch.ones(prompts.shape, dtype=torch.bool)
    assert_same(decode(gpt2_lm, prompts, spec, prompt_attention_mask=ones), decode(gpt2_lm, prompts, spec))


# ----------------------------------------------------------------------------------- temperature sampling


def test_counter_uniform_is_deterministic_and_uniform() -> None:
    from d3llm_pipeline.decoding.noise import counter_uniform

    keys = torch.arange(20000)
    u = counter_uniform(3, keys)
    assert torch.equal(u, counter_uniform(3, keys))
    assert not torch.equal(u, counter_uniform(4, keys))
    assert (u > 0).all() and (u < 1).all()
    hist = torch.histc(u.float(), bins=10, min=0, max=1)  # expected 2000 per bin, std ~42
    assert (hist - 2000).abs().max() < 250


def test_gumbel_max_draws_follow_softmax_over_temperature() -> None:
    from d3llm_pipeline.decoding.noise import gumbel_noise

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature, n = 0.7, 20000
    g = gumbel_noise(0, torch.arange(n), torch.zeros(n, dtype=torch.long), torch.zeros(n, 1, dtype=torch.long), 4)
    pred = predict(logits.expand(n, 1, 4), temperature=temperature, gumbel=g)
    freq = torch.bincount(pred.tokens.flatten(), minlength=4).float() / n
    expected = torch.softmax(logits / temperature, dim=-1)
    assert (freq - expected).abs().max() < 0.015  # binomial std <= 0.0035
    # Confidence is the unperturbed probability of the drawn token.
    assert torch.allclose(pred.confidence.flatten(), torch.softmax(logits, -1)[pred.tokens.flatten()])


def test_sampled_decoding_is_batch_independent_with_sample_keys(
    gpt2_lm: HFDiffusionAdapter, prompts: torch.Tensor
) -> None:
    spec = DecodeSpec(gen_length=16, block_size=8, rule="vanilla", score="confidence", temperature=1.5, seed=7)
    keys = torch.tensor([10, 11, 12, 13, 14])
    batched = decode(gpt2_lm, prompts, spec, sample_keys=keys)
    for b in range(prompts.shape[0]):
        alone = decode(gpt2_lm, prompts[b : b + 1], spec, sample_keys=keys[b : b + 1])
        assert torch.equal(batched.sequences[b : b + 1], alone.sequences)
        assert torch.equal(batched.unmask_step[b : b + 1], alone.unmask_step)
    greedy = decode(gpt2_lm, prompts, DecodeSpec(**{**spec.__dict__, "temperature": 0.0}))
    other_seed = decode(gpt2_lm, prompts, DecodeSpec(**{**spec.__dict__, "seed": 8}), sample_keys=keys)
    assert not torch.equal(batched.sequences, greedy.sequences)  # T = 1.5 really samples
    assert not torch.equal(batched.sequences, other_seed.sequences)


def test_mix64_equals_plain_python_splitmix64() -> None:
    from d3llm_pipeline.decoding.noise import mix64

    def reference(z: int) -> int:  # splitmix64 on Python ints, reduced to 64 bits, then read as signed
        full = (1 << 64) - 1
        z = (z + 0x9E3779B97F4A7C15) & full
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & full
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & full
        z ^= z >> 31
        return z - (1 << 64) if z >= 1 << 63 else z

    values = [0, 1, 12345, 2**40 + 7, -5]
    assert mix64(torch.tensor(values)).tolist() == [reference(v & ((1 << 64) - 1)) for v in values]


def test_noise_at_the_candidates_is_the_full_noise_rows() -> None:
    from d3llm_pipeline.decoding.noise import gumbel_noise, gumbel_noise_at

    keys, steps = torch.tensor([5, 9, 2]), torch.tensor([0, 3, 7])
    positions = torch.arange(6).expand(3, -1)
    where = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    full = gumbel_noise(11, keys, steps, positions, 50)[where]  # (n, V)
    for count in (None, int(where.sum())):
        assert torch.equal(gumbel_noise_at(11, keys, steps, positions, where, count, 50), full)
