"""task=arith_long (tasks/arith_long.py): k independent problems per sample, fixed prompt slots, all answers graded;
task=arith is untouched (its fingerprints leave the new key out).

Run: .venv/bin/python -m pytest tests/unit/test_task_arith_long.py -q
"""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest
from conftest import compose_at

from d3llm_pipeline.config.schema import load_section, load_task
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.tasks import arith, arith_long


def long_config(**kw) -> arith_long.ArithLongTask:
    return arith_long.ArithLongTask(**{"problems_per_sample": 4, "min_steps": 2, "max_steps": 4, "prompt_length": 84,
                                       "gen_length": 128, "n_train": 200, "n_val": 20, "n_test": 50, **kw})


def test_composite_layout_and_answers():
    rng, parts_rng = random.Random("x"), random.Random("x")
    p = arith_long.generate_composite(rng, 2, 4, 3)
    parts = [arith.generate_problem(parts_rng, 2, 4) for _ in range(3)]  # the same draws, one by one
    words = p.prompt.split()
    width = arith_long.slot_tokens(4)
    assert width == 20 and len(words) == 3 * width + 1 and words[-1] == arith.SEP
    for k, part in enumerate(parts):  # sub-problem k sits at positions [20k, 20k + its length), then [PAD]s
        sub = part.prompt.split()[:-1]
        assert words[k * width: k * width + len(sub)] == sub
        assert set(words[k * width + len(sub): (k + 1) * width]) <= {arith.PAD}
    assert p.response == " ".join(part.response for part in parts)
    assert p.answers == tuple(part.answer for part in parts) and p.answer == parts[-1].answer


def test_grading_needs_every_answer_in_order():
    p = arith_long.generate_composite(random.Random(1), 2, 3, 3)
    task = long_config(problems_per_sample=3, max_steps=3)
    graded = task.grade(p.response, p)
    assert graded.correct and graded.chain_correct
    assert graded.predicted == " ".join(map(str, p.answers))  # every sub-answer, in order
    wrong_last = p.response.rsplit("####", 1)[0] + f"#### {(p.answers[-1] + 1) % 10}"
    assert not task.grade(wrong_last, p).correct
    assert not task.grade(p.response.rsplit("####", 1)[0], p).correct  # a missing answer
    assert arith_long.extract_answers("1 + 1 = 2 #### 2 x #### [MASK]") == [2, None]
    broken_chain = p.response.replace("=", "+", 1)
    graded = task.grade(broken_chain, p)
    assert graded.correct and not graded.chain_correct  # answers still right: accuracy counts answers, chains apart


def test_splits_encode_and_hold_out_whole_responses(tokenizer):
    splits = arith.make_splits(long_config())
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [200, 20, 50]
    held_out = {p.response for p in splits["test"] + splits["validation"]}
    assert not any(p.response in held_out for p in splits["train"])
    prompts, responses = arith.encode(splits["test"], tokenizer, 84, 128)
    assert prompts.shape == (50, 84) and responses.shape == (50, 128)
    lengths = [len(p.response.split()) for p in splits["test"]]
    assert max(lengths) <= 100 and sum(lengths) / len(lengths) > 4 * 16  # a typical response fills > 4 blocks of 16
    text = arith.decode_response(responses[0], tokenizer)
    assert text == splits["test"][0].response and long_config().grade(text, splits["test"][0]).correct


def test_preset_and_its_checks(tmp_path):
    task = load_task(compose_at(tmp_path, "task=arith_long").task)
    assert isinstance(task, arith_long.ArithLongTask) and task.kind == "arith_long"
    assert (task.problems_per_sample, task.prompt_length, task.gen_length) == (4, 84, 128)
    with pytest.raises(ConfigError, match=r"task.prompt_length must be >= 81 for task.max_steps=4, "
                                          r"task.problems_per_sample=4, got 60"):
        load_section({**asdict(task), "prompt_length": 60}, arith_long.ArithLongTask, "task")
    with pytest.raises(ConfigError, match="task.gen_length must be >= 101"):
        load_section({**asdict(task), "gen_length": 96}, arith_long.ArithLongTask, "task")


def test_the_embedded_task_keeps_its_fingerprints(tmp_path):
    """problems_per_sample = 1 is left out of teacher / trajectory fingerprints, so existing artifacts stay valid."""
    identity = load_task(compose_at(tmp_path).task).identity()
    assert "problems_per_sample" not in identity and "kind" not in identity
    assert identity == {"name": "arith", "seed": 1234, "prompt_length": 24, "gen_length": 64, "min_steps": 2,
                        "max_steps": 5, "n_train": 50000, "n_val": 200, "n_test": 1000}  # as artifacts recorded it
    assert load_task(compose_at(tmp_path, "task=arith_long").task).identity()["problems_per_sample"] == 4
