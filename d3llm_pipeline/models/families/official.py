"""The real families' checkpoints (LLaDA, Dream): released in their official on-disk format and loaded natively
into stock transformers modules (native.py), or with the checkpoint's own code (model.backend=remote, remote.py).

    FAMILY = OfficialFamily(name="llada", model_type="llada", ...)   # llada.py / dream.py
    path, config = FAMILY.check("GSAI-ML/LLaDA-8B-Instruct", "model.path", make_cmd)   # Hub cache or a local dir
    lm, tokenizer = FAMILY.load(path, dtype="bfloat16", device="cuda")

Importing this module does not import torch (the loaders are imported when a model loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from d3llm_pipeline.models.families import checkpoint
from d3llm_pipeline.models.families.base import Family


class OfficialFamily(Family):
    """A family whose checkpoints are official-format dirs (config.json + safetensors) or Hub ids."""

    def check(self, path: str | Path, key: str, make_cmd: str, backend: str = "native") -> tuple[Path, dict]:
        """(local dir, config.json) of a usable checkpoint of this family; a Hub id is resolved from the cache.
        `make_cmd` is not named: a released checkpoint is downloaded, never made here.

        model.backend=remote runs the checkpoint's own code whatever its model_type: only config.json must parse.
        """
        if backend == "remote":
            return checkpoint.read_config(path, key)
        return checkpoint.check_official(self, path, key)

    def load(self, path: str | Path, dtype: str = "float32", device: Any = "cpu", attn_implementation: str = "sdpa",
             backend: str = "native", key: str = "model.path"):
        if backend == "remote":
            from d3llm_pipeline.models.families.remote import load_remote

            return load_remote(self, Path(path), dtype, device)
        from d3llm_pipeline.models.families.native import load_native

        return load_native(self, Path(path), dtype, device, attn_implementation, key)
