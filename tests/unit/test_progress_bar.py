"""The training bar of a max_steps run (training/fit.py StepBoundProgressBar): Lightning's reads "Epoch 0/-2" when
max_epochs=-1; ours counts the last epoch from max_steps and the optimiser steps per epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from d3llm_pipeline.training.fit import StepBoundProgressBar, progress_bar


@pytest.mark.parametrize("batches,accumulate,max_epochs,max_steps,expected", [
    (4, 1, -1, 10, "Epoch 0/2"),   # 10 steps of 4 per epoch: epochs 0, 1, 2
    (4, 2, -1, 10, "Epoch 0/4"),   # 2 batches per step: 2 steps per epoch
    (30, 1, -1, 30, "Epoch 0/0"),  # the teacher: one epoch of max_steps batches
    (4, 1, 3, -1, "Epoch 0/2"),    # bounded by epochs: Lightning's own label
])
def test_the_bar_names_the_last_epoch(batches, accumulate, max_epochs, max_steps, expected):
    bar = StepBoundProgressBar()
    bar._trainer = SimpleNamespace(num_training_batches=batches, accumulate_grad_batches=accumulate,
                                   max_epochs=max_epochs, max_steps=max_steps)
    assert bar._get_train_description(0).strip() == expected


def test_no_bar_when_the_trainer_shows_none():
    assert progress_bar(OmegaConf.create({"trainer": {"enable_progress_bar": False}})) == []
    assert isinstance(progress_bar(OmegaConf.create({"trainer": {}}))[0], StepBoundProgressBar)


def test_step_progress_estimates_only_from_kinds_it_has_timed(monkeypatch):
    """What is left = each timed kind's mean x its steps to come; an untimed kind is counted, not guessed."""
    from d3llm_pipeline.stages import steps

    # start; per step its start, its end and the elapsed time logged: teacher 300 s, eval 10 s, eval 20 s
    clock = iter([0.0, 0.0, 300.0, 300.0, 300.0, 310.0, 310.0, 310.0, 330.0, 330.0])
    monkeypatch.setattr(steps.time, "perf_counter", lambda: next(clock))
    progress = steps.StepProgress("pipeline", ["teacher", "distill", "eval", "eval", "eval"])
    with progress.step("teacher"):
        pass
    assert progress.left() == "1 distill, 3 eval step(s) not timed yet"
    with progress.step("sweeps/tiny_vanilla/0", "eval"):
        pass
    with progress.step("sweeps/tiny_vanilla/1", "eval"):
        pass
    assert progress.left() == "about 0m15s and 1 distill step(s) not timed yet"  # one eval left at the 15 s mean


def test_a_reused_step_counts_as_done_but_not_toward_its_kinds_mean(monkeypatch):
    """A reused student returns in a second; a mean over it would promise the next students in seconds."""
    from d3llm_pipeline import artifacts
    from d3llm_pipeline.stages import steps

    # start; per step its start, its end and the elapsed time logged: a reused student 1 s, a trained one 300 s
    clock = iter([0.0, 0.0, 1.0, 1.0, 1.0, 301.0, 301.0, 301.0])
    monkeypatch.setattr(steps.time, "perf_counter", lambda: next(clock))
    progress = steps.StepProgress("ablation", ["distill"] * 4)
    with progress.step("student", "distill") as timed:
        timed.reused = steps.was_reused({"steps": 750, artifacts.REUSED: True})
    assert progress.done == 1 and progress.left() == "3 distill step(s) not timed yet"
    with progress.step("student_seed1", "distill") as timed:
        timed.reused = steps.was_reused({"steps": 750})
    assert progress.left() == "about 10m00s"  # 2 more at the trained one's 300 s, not at (1 + 300) / 2
    assert steps.was_reused({"labelled_now": 0}) and not steps.was_reused({"labelled_now": 5})
    assert not steps.was_reused(None)
