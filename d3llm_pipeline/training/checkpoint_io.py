"""How Lightning writes the teacher's and the student's resume checkpoints (`<out_dir>.lightning/last.ckpt`): whole
or not at all, staged beside the file.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temp file sits in the *system* temp dir
(fsspec's LocalFileOpener calls `tempfile.mkstemp()` without a dir) and is then moved into place: where /tmp is
another filesystem than the outputs (node-local /tmp, shared outputs: the usual cluster) that move is a copy, so a
job killed mid-copy leaves a torn `last.ckpt` and the resume fails, and /tmp must hold a whole checkpoint. Here the
temp file is made in the checkpoint's own dir, flushed to disk and renamed over the old one (`os.replace`: atomic
on one filesystem), so a kill leaves the previous checkpoint or the new one, never half of one.

    Trainer(..., plugins=[AtomicCheckpointIO()])   # training/fit.py trainer_kwargs adds it to every fit
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are staged in the target's dir and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}."
        for stale in path.parent.glob(f"{prefix}*.tmp"):  # left by a save that was killed (one writer: rank 0)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        handle, temp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
