"""Tests for the synthetic "arith" task (d3llm_pipeline.tasks.arith) and its tokenizer."""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
import torch

from d3llm_pipeline.tasks.arith import (
    EOS,
    MASK,
    MINUS_VERBS,
    PAD,
    PLUS_VERBS,
    SEP,
    VOCAB,
    ArithTask,
    Problem,
    chain_correct,
    decode_response,
    encode,
    extract_answer,
    generate_problem,
    grade,
    make_splits,
    max_prompt_tokens,
    max_response_tokens,
)
from d3llm_pipeline.tasks.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer

EXAMPLE = Problem(
    prompt="sue has 5 pens . loses 4 . buys 3 . gives 1 . how many ? [SEP]",
    response="5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3 #### 3",
    answer=3,
)
PROMPT_RE = re.compile(r"(\w+) has (\d) (\w+) \.((?: \w+ \d \.)+) how many \? \[SEP\]")
STEP_RE = re.compile(r"(\d) ([+-]) (\d) = (\d)")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def splits():
    return make_splits(ArithTask(seed=0, n_train=5000, min_steps=3))


def parse(p: Problem) -> tuple[int, list[tuple[str, int]], list[tuple[int, str, int, int]]]:
    """(start value, [(verb, amount)], [(a, op, b, c)]) of a problem; asserts the format."""
    m = PROMPT_RE.fullmatch(p.prompt)
    assert m, p.prompt
    verbs = [(v, int(a)) for v, a in re.findall(r"(\w+) (\d) \.", m[4])]
    chain, final = p.response.split(" #### ")
    steps = []
    for s in chain.split(" , "):
        sm = STEP_RE.fullmatch(s)
        assert sm, s
        steps.append((int(sm[1]), sm[2], int(sm[3]), int(sm[4])))
    assert int(final) == p.answer
    return int(m[2]), verbs, steps


# --- vocabulary and tokenizer -------------------------------------------------------


def test_vocab_special_ids_and_layout():
    assert VOCAB[:4] == [PAD, MASK, EOS, SEP] == ["[PAD]", "[MASK]", "[EOS]", "[SEP]"]
    assert len(VOCAB) == len(set(VOCAB)) == 44
    # Hand-checked positions: first name, first item, "####", digits last.
    assert VOCAB.index("sue") == 4 and VOCAB.index("pens") == 12
    assert VOCAB.index("####") == 33 and VOCAB[34:] == [str(d) for d in range(10)]


def test_tokenizer_ids_match_vocab_index(tok):
    assert tok.convert_tokens_to_ids(VOCAB) == list(range(len(VOCAB)))
    assert (tok.pad_token_id, tok.mask_token_id, tok.eos_token_id, tok.sep_token_id) == (0, 1, 2, 3)
    text = " ".join(VOCAB)
    # No BOS/EOS added around the words, and every word is one token.
    assert tok(text)["input_ids"] == list(range(len(VOCAB)))
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_round_trip_example(tok):
    for text in (EXAMPLE.prompt, EXAMPLE.response):
        ids = tok(text)["input_ids"]
        assert ids == [VOCAB.index(w) for w in text.split()]
        assert tok.decode(ids) == text


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    tok2 = load_tokenizer(tmp_path / "tok")
    text = EXAMPLE.prompt + " " + EXAMPLE.response + " [EOS] [MASK]"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.decode(tok2(text)["input_ids"]) == text
    assert (tok2.pad_token_id, tok2.mask_token_id, tok2.eos_token_id, tok2.sep_token_id) == (0, 1, 2, 3)
    p1, r1 = encode([EXAMPLE], tok, 24, 64)
    p2, r2 = encode([EXAMPLE], tok2, 24, 64)
    assert torch.equal(p1, p2) and torch.equal(r1, r2)


def test_build_tokenizer_rejects_bad_vocab():
    with pytest.raises(ValueError, match="duplicate"):
        build_tokenizer([*VOCAB, "sue"])
    with pytest.raises(ValueError, match="MASK"):
        build_tokenizer([w for w in VOCAB if w != MASK])


# --- encode / decode ----------------------------------------------------------------


def test_encode_known_layout(tok):
    prompt_ids, response_ids = encode([EXAMPLE], tok, 24, 64)
    # sue has 5 pens . loses 4 . buys 3 . gives 1 . how many ? [SEP]
    want_prompt = [4, 24, 39, 12, 25, 21, 38, 25, 18, 37, 25, 22, 35, 25, 26, 27, 28, 3] + [0] * 6
    # 5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3 #### 3
    want_resp = [39, 30, 38, 31, 35, 32, 35, 29, 37, 31, 38, 32, 38, 30, 35, 31, 37, 33, 37] + [2] * 45
    assert prompt_ids.dtype == response_ids.dtype == torch.long
    assert prompt_ids.tolist() == [want_prompt]
    assert response_ids.tolist() == [want_resp]


def test_encode_matches_tokenizer_on_generated(tok, splits):
    probs = splits["test"][:50]
    prompt_ids, response_ids = encode(probs, tok, 24, 64)
    assert prompt_ids.shape == (50, 24) and response_ids.shape == (50, 64)
    for p, pi, ri in zip(probs, prompt_ids.tolist(), response_ids.tolist(), strict=True):
        want_p = tok(p.prompt)["input_ids"]
        want_r = tok(p.response)["input_ids"]
        assert pi == want_p + [0] * (24 - len(want_p))
        assert ri == want_r + [2] * (64 - len(want_r))


def test_encode_raises_when_regions_too_small(tok):
    with pytest.raises(ValueError, match="prompt_length"):
        encode([EXAMPLE], tok, 17, 64)
    # 19 response tokens fit exactly, but the mandatory EOS does not.
    with pytest.raises(ValueError, match="gen_length"):
        encode([EXAMPLE], tok, 24, 19)
    _, r = encode([EXAMPLE], tok, 18, 20)
    assert r[0, -1].item() == 2
    with pytest.raises(ValueError, match="unknown word"):
        encode([Problem("sue has 5 dogs . how many ? [SEP]", "#### 5", 5)], tok, 24, 64)


def test_encode_empty(tok):
    p, r = encode([], tok, 24, 64)
    assert p.shape == (0, 24) and r.shape == (0, 64)


def test_decode_response_stops_at_first_eos(tok):
    _, response_ids = encode([EXAMPLE], tok, 24, 64)
    assert decode_response(response_ids[0], tok) == EXAMPLE.response
    assert decode_response(response_ids[0].tolist(), tok) == EXAMPLE.response
    # Content after the first EOS is ignored; MASK/PAD before it are rendered.
    ids = [39, 1, 0, 2, 37, 33, 37]
    assert decode_response(ids, tok) == "5 [MASK] [PAD]"
    assert decode_response(torch.tensor([2, 37]), tok) == ""
    with pytest.raises(ValueError):
        decode_response([len(VOCAB) + 5], tok)


# --- generation ---------------------------------------------------------------------


def test_generated_problems_are_valid(tok):
    rng = random.Random(123)
    seen_steps = Counter()
    for _ in range(2000):
        p = generate_problem(rng, 3, 5)
        start, verbs, steps = parse(p)
        assert 2 <= start <= 9
        assert 3 <= len(steps) <= 5 and len(verbs) == len(steps)
        seen_steps[len(steps)] += 1
        total = start
        for (verb, amount), (a, op, b, c) in zip(verbs, steps, strict=True):
            # The prompt and the chain describe the same step.
            assert a == total and b == amount and 1 <= amount <= 9
            assert verb in (PLUS_VERBS if op == "+" else MINUS_VERBS)
            total = total + amount if op == "+" else total - amount
            assert c == total and 0 <= total <= 9
        assert p.answer == total
        assert chain_correct(p.response) and grade(p.response, p.answer)
        assert p.prompt.endswith(" [SEP]") and EOS not in p.response
        assert len(tok(p.prompt)["input_ids"]) <= 24
    assert set(seen_steps) == {3, 4, 5}


def test_step_choice_is_uniform_over_valid_pairs():
    # From total t there are 9 valid pairs, 9-t of them "plus": P(plus | t) = (9-t)/9.
    rng = random.Random(7)
    plus, count = Counter(), Counter()
    for _ in range(20000):
        start, _, steps = parse(generate_problem(rng, 3, 5))
        for a, op, _, _ in steps:
            count[a] += 1
            plus[a] += op == "+"
    assert plus[9] == 0 and plus[0] == count[0] > 0
    for t in range(1, 9):
        assert abs(plus[t] / count[t] - (9 - t) / 9) < 0.03, t


def test_generate_problem_covers_vocabulary():
    rng = random.Random(0)
    words = Counter(w for _ in range(3000) for w in generate_problem(rng, 3, 5).prompt.split())
    for w in VOCAB[4:24]:  # names, items and all six verbs appear
        assert words[w] > 0, w


def test_generate_problem_step_bounds():
    rng = random.Random(1)
    assert {len(parse(generate_problem(rng, 1, 1))[2]) for _ in range(50)} == {1}
    with pytest.raises(ValueError, match="min_steps"):
        generate_problem(rng, 0, 3)
    with pytest.raises(ValueError, match="max_steps"):
        generate_problem(rng, 4, 3)


def test_response_lengths_span_two_blocks(tok, splits):
    lengths = [len(p.response.split()) for p in splits["train"]]
    assert sum(lengths) / len(lengths) > 16
    assert max(lengths) + 1 <= 64
    _, r = encode(splits["train"], tok, 24, 64)
    assert bool((r[:, -1] == 2).all())


# --- splits -------------------------------------------------------------------------


def test_splits_sizes_and_determinism(splits):
    cfg = ArithTask(seed=0, n_train=5000, min_steps=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 5000, "validation": 200, "test": 1000}
    again = make_splits(cfg)
    assert again == splits
    other = make_splits(ArithTask(seed=1, n_train=5000, min_steps=3))
    assert other["test"] != splits["test"] and other["train"] != splits["train"]


def test_splits_are_disjoint(splits):
    test_resp = {p.response for p in splits["test"]}
    val_resp = {p.response for p in splits["validation"]}
    assert not test_resp & val_resp
    assert not {p.response for p in splits["train"]} & (test_resp | val_resp)
    assert len({p.prompt for p in splits["test"]}) == len(splits["test"])


def test_train_rejection_is_exercised():
    # Held-out chains are common enough at 1 step (8 * 9 = 72 possible chains) that
    # train would contain them without filtering; it must contain none.
    cfg = ArithTask(min_steps=1, max_steps=1, n_train=500, n_val=10, n_test=20)
    s = make_splits(cfg)
    held = {p.response for p in s["test"] + s["validation"]}
    assert len(held) >= 20 and not held & {p.response for p in s["train"]}


def test_impossible_split_raises():
    with pytest.raises(ValueError, match="test"):
        make_splits(ArithTask(min_steps=1, max_steps=1, n_train=0, n_val=0, n_test=100000))


def test_default_splits_are_fast():
    t0 = time.perf_counter()
    s = make_splits(ArithTask())
    assert len(s["train"]) == 50000
    assert time.perf_counter() - t0 < 2.0


def test_config_validation():
    with pytest.raises(ValueError, match="prompt_length"):
        ArithTask(prompt_length=23)  # a 5-step prompt is 24 tokens
    with pytest.raises(ValueError, match="gen_length"):
        ArithTask(gen_length=31)  # a 5-step response is 31 tokens, + EOS
    ArithTask(prompt_length=24, gen_length=32)


def test_length_bounds_match_generated_problems():
    rng = random.Random(7)
    for n_steps in (1, 3, 5):
        problem = generate_problem(rng, n_steps, n_steps)
        assert len(problem.response.split()) == max_response_tokens(n_steps)
        assert len(problem.prompt.split()) == max_prompt_tokens(n_steps)


# --- grading ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("5 - 4 = 1 #### 1", 1),
        ("#### 2 , 1 + 1 = 2 #### 7", 7),  # last "####" wins
        ("####   8   ", 8),
        ("####8", 8),
        ("#### 12 [MASK]", 12),
        ("5 - 4 = 1", None),
        ("", None),
        ("#### [MASK]", None),
        ("#### 3 ####", None),
        ("#### 1_0", None),
        ("#### x3", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_grade():
    assert grade(EXAMPLE.response, 3)
    assert not grade(EXAMPLE.response, 4)
    assert not grade("5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3 #### [MASK]", 3)
    assert not grade("5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3", 3)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (EXAMPLE.response, True),
        ("5 - 4 = 1 , 1 + 3 = 4", True),
        ("5 - 4 = 1 , 1 + 3 = 5 #### 5", False),
        ("5 - 4 = 2 #### 2", False),
        ("5 - 4 = 1 , 1 [MASK] 3 = 4 #### 4", False),
        ("#### 3", False),
        ("", False),
    ],
)
def test_chain_correct(text, want):
    assert chain_correct(text) is want
