"""task=roster (tasks/roster.py): every order of the entries is correct, mixtures are not; fixed prompt slots;
held-out prompts never in train; the preset and its checks. The arith splits are untouched by the shared base.

Run: .venv/bin/python -m pytest tests/unit/test_task_roster.py -q
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict

import pytest
from conftest import compose_at

from d3llm_pipeline.config.schema import load_section, load_task
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.tasks import arith, roster
from d3llm_pipeline.tasks.synthetic import make_splits


def small(**kw) -> roster.RosterTask:
    return roster.RosterTask(**{"n_train": 300, "n_val": 20, "n_test": 50, **kw})


def test_layout_fixed_slots_and_one_uniform_form():
    p = roster.generate_roster(random.Random(3), 4, 8)
    words = p.prompt.split()
    k = len(p.answers)
    assert 4 <= k <= 8 and len(words) == 44 and words[-4:] == ["how", "many", "?", arith.SEP] and p.answer == k
    for j, name in enumerate(arith.NAMES):  # each person in their name's own slot, [PAD] where absent
        slot = words[5 * j: 5 * j + 5]
        assert slot[:2] == [name, "has"] and slot[4] == "." if name in p.answers else slot == [arith.PAD] * 5
    assert list(p.answers) == [n for n in arith.NAMES if n in p.answers]  # prompt order
    assert sorted(roster.read_names(p.response)) == sorted(p.answers)
    assert p.response.split()[:2] == ["1", roster.read_names(p.response)[0]]
    # the form is drawn uniformly: over many draws with k = 4 every one of the 24 orders of the people occurs
    rng, seen = random.Random(0), set()
    for _ in range(2000):
        q = roster.generate_roster(rng, 4, 4)
        seen.add(tuple(q.answers.index(n) for n in roster.read_names(q.response)))
    assert seen == set(itertools.permutations(range(4)))


def test_every_order_is_correct_and_mixtures_are_not():
    task = small(orders="any")
    p = roster.generate_roster(random.Random(7), 4, 4)
    a, b, c, d = p.answers
    for order in itertools.permutations(p.answers):
        graded = task.grade(roster.numbered(order), p)
        assert graded.correct and graded.predicted == " ".join(order) and graded.chain_correct is None
    absent = next(n for n in arith.NAMES if n not in p.answers)
    wrong = [
        roster.numbered([a, a, c, d]),  # one person twice, one missing (two half-orders mixed)
        roster.numbered([a, b, c]),  # someone left out
        roster.numbered([a, b, c, d, absent]),  # someone absent
        roster.numbered([a, b, c, absent]),
        f"1 {a} , 2 {b} , 4 {c} , 3 {d}",  # numbered out of order
        f"1 {a} , 2 {b} 3 {c} , 4 {d}",  # a missing comma
        f"1 {a} , 2 {b} , 3 {c} , [MASK] [MASK]",  # unfinished
    ]
    assert not any(task.grade(text, p).correct for text in wrong)
    assert task.grade(wrong[-1], p).predicted is None and task.answer_text(p) == " ".join(p.answers)


def test_orders_ends_draws_two_forms_and_rejects_their_mixtures():
    """task.orders=ends: prompt order or its reverse, both drawn; every other order (a mixture of the two) is wrong."""
    task = small()  # the default
    rng = random.Random(5)
    forms = [roster.read_names(roster.generate_roster(rng, 4, 4, "ends").response) for _ in range(200)]
    p = roster.generate_roster(random.Random(7), 4, 4, "ends")
    names = list(p.answers)
    assert {tuple(f) == tuple(sorted(f, key=arith.NAMES.index)) for f in forms} == {True, False}  # both forms occur
    assert all(f in ([n for n in arith.NAMES if n in f], [n for n in reversed(arith.NAMES) if n in f]) for f in forms)
    right = [order for order in itertools.permutations(names) if task.grade(roster.numbered(order), p).correct]
    assert right == [tuple(names), tuple(reversed(names))]
    a, b, c, d = names
    assert not task.grade(roster.numbered([a, b, b, a]), p).correct  # two half-orders
    assert small(orders="any").grade(roster.numbered([b, a, c, d]), p).correct
    # any order's fingerprint is what it was before the field existed, so its artifacts stay reusable
    assert "orders" not in small(orders="any").identity() and small().identity()["orders"] == "ends"
    with pytest.raises(ConfigError, match="task.orders must be one of any, ends"):
        small(orders="sorted")


def test_splits_hold_out_prompts_and_encode(tokenizer):
    task = small()
    splits = make_splits(task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [300, 20, 50]
    held_out = {p.prompt for p in splits["test"] + splits["validation"]}
    assert not any(p.prompt in held_out for p in splits["train"])
    assert make_splits(small())["test"] == splits["test"]  # a pure function of the fields
    prompts, responses = task.encode(splits["test"], tokenizer)
    assert prompts.shape == (50, 44) and responses.shape == (50, 32)
    text = task.read(responses[0], tokenizer)
    assert text == splits["test"][0].response and task.grade(text, splits["test"][0]).correct
    assert {len(p.response.split()) for p in splits["train"]} == {roster.response_tokens(5)} == {14}  # 1 block


def test_preset_and_its_checks(tmp_path):
    task = load_task(compose_at(tmp_path, "task=roster").task)
    assert isinstance(task, roster.RosterTask) and (task.prompt_length, task.gen_length) == (44, 32)
    with pytest.raises(ConfigError, match="task.gen_length must be >= 24 for task.max_people=8, got 20"):
        load_section({**asdict(task), "max_people": 8, "gen_length": 20}, roster.RosterTask, "task")
    with pytest.raises(ConfigError, match="task.min_people and task.max_people must satisfy"):
        load_section({**asdict(task), "max_people": 9}, roster.RosterTask, "task")


def test_arith_splits_unchanged_by_the_shared_base():
    """arith's split streams and held-out rule (by chain of thought) are those its artifacts were made with."""
    test = make_splits(arith.ArithTask(n_train=0, n_val=0, n_test=3))["test"]
    again = arith.generate_problem(random.Random("arith-1234-test"), 2, 5)
    assert test[0] == again
