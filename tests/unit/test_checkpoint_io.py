"""Resume checkpoints are written whole or not at all, staged in their own dir (training/checkpoint_io.py).

Run: .venv/bin/python -m pytest -q tests/unit/test_checkpoint_io.py
"""

import os
import tempfile

import pytest
import torch

from d3llm_pipeline.training.checkpoint_io import AtomicCheckpointIO


def test_a_save_is_staged_beside_the_file_and_renamed_into_place(tmp_path, monkeypatch):
    ckpt = tmp_path / "student.lightning" / "last.ckpt"
    moves = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((src, dst)), replace(src, dst)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # the system temp dir is never used
    AtomicCheckpointIO().save_checkpoint({"global_step": 5, "w": torch.arange(3)}, ckpt)
    assert [os.path.dirname(src) for src, _ in moves] == [str(ckpt.parent)] and moves[0][1] == ckpt
    loaded = AtomicCheckpointIO().load_checkpoint(ckpt)
    assert loaded["global_step"] == 5 and torch.equal(loaded["w"], torch.arange(3))
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 5}, ckpt)
    save = torch.save

    def torn(obj, file):  # half the bytes, then the process dies
        save(obj, file)
        file.truncate(file.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 10}, ckpt)
    monkeypatch.setattr(torch, "save", save)
    assert io.load_checkpoint(ckpt)["global_step"] == 5  # Lightning's own write would have torn this file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    (tmp_path / ".last.ckpt.abc.tmp").write_bytes(b"half")  # what a SIGKILL (no cleanup) leaves
    io.save_checkpoint({"global_step": 15}, ckpt)
    assert io.load_checkpoint(ckpt)["global_step"] == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the next save removes it


def test_every_fit_writes_through_it(tmp_path):
    from omegaconf import OmegaConf

    from d3llm_pipeline.training.fit import trainer_kwargs

    cfg = OmegaConf.create({"stage": {"name": "teacher"}, "trainer": {"accelerator": "cpu", "plugins": ["x"]}})
    plugins = trainer_kwargs(cfg)["plugins"]
    assert plugins[0] == "x" and isinstance(plugins[1], AtomicCheckpointIO)  # a user's plugin stays
