"""The conf/ presets the lm-eval model reads: decode presets (conf/decode/<name>.yaml) and model presets
(conf/model/<name>.yaml, or a path to such a YAML), without composing the whole Hydra config.

    settings = model_preset("d3llm_llada")     # {"path", "family", "dtype", ..., "decode_defaults": {...}}
    knobs = decode_knobs("d3llm", settings)    # DecodeSpec fields; τ, A, D, d, R from the model's decode_defaults
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from d3llm_pipeline.config.schema import ConfigError
from d3llm_pipeline.decoding import DecodeSpec

CONF = Path(__file__).resolve().parents[1] / "conf"  # the package's conf (a link to the top-level conf/)
SPEC_FIELDS = {f.name: f for f in dataclasses.fields(DecodeSpec)}
MODEL_KEYS = ("path", "family", "dtype", "attn_implementation", "backend")


def _preset_file(group: str, name: str, key: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONF / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        raise ConfigError(f"{key}={name!r} is not a preset (a conf/{group} name or a .yaml path); "
                          f"use one of: {', '.join(known)}")
    return path


def model_preset(name: str) -> dict[str, Any]:
    """The loading settings of a model preset, plus its `decode_defaults` (empty when it has none).

    A value that needs the rest of the Hydra config (the tiny preset's `${paths.artifacts_dir}/teacher`) is
    left out: pass it as a model_arg instead (pretrained=<dir>).
    """
    cfg = OmegaConf.load(_preset_file("model", name, "preset"))
    out: dict[str, Any] = {}
    for key in MODEL_KEYS:
        try:
            if cfg.get(key) is not None:
                out[key] = str(cfg[key])
        except InterpolationResolutionError:
            continue
    out["decode_defaults"] = OmegaConf.to_container(cfg.get("decode_defaults") or OmegaConf.create({}))
    return out


def decode_knobs(name: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DecodeSpec fields of a decode preset, its `${oc.select:model.decode_defaults.*}` read from `model`.

    gen_length is skipped: it is `${task.gen_length}` there and comes from each request's max_gen_toks here.
    """
    decode_cfg = OmegaConf.load(_preset_file("decode", name, "decode"))
    root = OmegaConf.create({"model": {"decode_defaults": (model or {}).get("decode_defaults") or {}},
                             "decode": decode_cfg})
    return {k: root.decode[k] for k in decode_cfg if k in SPEC_FIELDS and k != "gen_length"}
