"""stage=teacher is reproducible: a crashed-and-resumed run and a run validating at another cadence both end with
exactly the weights of the uninterrupted run (each step's batch and random draws are functions of (seed, step)).

    pytest tests/e2e/test_teacher_reproducible.py -q       # 4 runs of a 12-step, 1-layer teacher: ~10 s on one core
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_at
from safetensors.torch import load_file

from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.training.teacher_module import DiffusionSFTModule

# 64 problems in batches of 8: 8 steps an epoch, so the 12 steps cross an epoch boundary; a checkpoint every 4 steps.
# Dropout on, so its masks must be per-step too (the default, 0, draws nothing).
TEACHER = ["stage=teacher", "experiment=smoke", "model.arch.dropout=0.1", "task.n_train=64", "task.n_val=16",
           "task.n_test=16", "stage.max_steps=12", "stage.warmup_steps=2", "stage.batch_size=8",
           "stage.val_problems=4", "stage.checkpoint_every=4", "trainer.enable_progress_bar=false", "logger=none"]


def train(root: Path, name: str, *extra: str, run: str = "") -> dict:
    """Train (or resume) the teacher `root/name` with `extra` overrides, logging to `root/run_<run or name>`."""
    return call_stage(compose_at(root, *TEACHER, f"model.path={root / name}",
                                 f"+output_dir={root / ('run_' + (run or name))}", *extra))


def weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(root / name / "model.safetensors")


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher_repro")
    summary = train(root, "straight", "stage.val_every=5")  # validates after steps 5 and 10
    assert summary["steps"] == 12 and "val/accuracy" in summary["final_metrics"]
    return root


def test_a_resumed_teacher_ends_bit_identical_to_an_uninterrupted_one(root, monkeypatch):
    original = DiffusionSFTModule.training_step

    def crash(self, batch, batch_idx):  # mid-epoch, two steps after the step-4 checkpoint
        if self.global_step == 6:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DiffusionSFTModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(root, "resumed", "stage.val_every=5")
    monkeypatch.setattr(DiffusionSFTModule, "training_step", original)
    assert (root / "resumed.lightning" / "last.ckpt").is_file() and not (root / "resumed").exists()

    summary = train(root, "resumed", "stage.val_every=5", run="resumed2")
    assert summary["resumed"] is True
    assert_identical(weights(root, "resumed"), weights(root, "straight"))


def test_the_validation_cadence_does_not_change_the_weights(root):
    summary = train(root, "every3", "stage.val_every=3")  # validates after steps 3, 6, 9, 12
    assert "val/accuracy" in summary["final_metrics"]
    assert_identical(weights(root, "every3"), weights(root, "straight"))
