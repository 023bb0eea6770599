"""The model-family registry: which dLLM families load, and how `model.family` / config.json select one.

Each family module (tiny.py, llada.py, dream.py: any module here with a top-level `FAMILY = ...`) owns its quirks:
special ids, logit alignment, native config and parameter names, LoRA targets, max positions, released shapes.
Importing this package does not import torch.

    from d3llm_pipeline.models.families import get_family, load_model
    lm, tok = load_model("/ckpt/llada", "llada", dtype="bfloat16", device="cuda")   # (adapter, tokenizer | None)
    fam = family_of("/ckpt/llada")                                                  # by config.json model_type
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from d3llm_pipeline.decoding.spec import DecodeDefaults
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.models.families.base import Family, SpecialIds, registered
from d3llm_pipeline.models.families.checkpoint import TEACHER_CMD
from d3llm_pipeline.registry import modules_defining

# Every module of this package with a top-level `FAMILY = ...` is a family (registry.py): adding one is that module.
for _module in modules_defining(Path(__file__).parent, "FAMILY"):
    importlib.import_module(f"{__name__}.{_module}")  # a family registers itself as it is built (base.registered)
FAMILIES: dict[str, Family] = registered()
EMBEDDED_FAMILY = "tiny"  # the embedded teacher: model.family's default, the one family stage=teacher trains

__all__ = ["EMBEDDED_FAMILY", "FAMILIES", "DecodeDefaults", "Family", "SpecialIds", "detect_family", "family_of", "get_family",
           "load_model"]


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"model.family must be one of: {', '.join(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def detect_family(config: dict) -> Family | None:
    """The family whose model_type a config.json (dict) has, or None."""
    return next((f for f in FAMILIES.values() if f.detect(config)), None)


def family_of(path: str | Path) -> Family | None:
    """The family of a local checkpoint dir by its config.json, or None when that is missing or unreadable."""
    try:
        return detect_family(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def load_model(path: str | Path, family: str, dtype: str = "float32", device: Any = "cpu",
               attn_implementation: str = "sdpa", backend: str = "native", key: str = "model.path",
               make_cmd: str = TEACHER_CMD) -> tuple[Any, Any]:
    """(DiffusionLM adapter, tokenizer or None): checks `path` (a dir or a cached Hub id), then loads it.

    Every failure is one PipelineError line naming the file and what is wrong.
    """
    return get_family(family).load_checked(path, key, make_cmd, dtype=dtype, device=device,
                                           attn_implementation=attn_implementation, backend=backend)
