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
