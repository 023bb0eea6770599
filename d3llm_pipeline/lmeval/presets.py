"""The conf/ presets the lm-eval model reads: decode presets (conf/decode/<name>.yaml) and model presets
(conf/model/<name>.yaml, or a path to such a YAML), without composing the whole Hydra config.

    settings = model_preset("d3llm_llada")     # {"path", "family", ..., "decode_defaults": {...}, "decode_table": {...}}
    knobs = decode_knobs("d3llm", settings)    # DecodeSpec fields; τ, A, D, d, R from the model's decode_defaults
    knobs = decode_knobs("d3llm", settings, task=table_task("d3llm_humaneval_chat"))   # the humaneval row (§6)

An lm-eval task name maps to the pipeline task (conf/task/<name>.yaml) that runs it, whose name keys the model's
decode_table (conf/decode_table/): the same lookup `stage=eval` does through ${decode_default:...}.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

# importing d3llm_pipeline.config registers the ${decode_default:...} resolver the decode presets use
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


def _decode_table(cfg) -> dict[str, Any]:
    """The decode table a model preset includes through its defaults list (`/decode_table/<x>@decode_table`)."""
    for entry in cfg.get("defaults") or []:
        text = str(entry)
        if text.startswith("/decode_table/") and text.endswith("@decode_table"):
            name = text[len("/decode_table/"): -len("@decode_table")]
            return OmegaConf.to_container(OmegaConf.load(_preset_file("decode_table", name, "decode_table")))
    return {}


def model_preset(name: str) -> dict[str, Any]:
    """The loading settings of a model preset, plus its `decode_defaults` and `decode_table` (empty when absent).

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
    out["decode_table"] = {**_decode_table(cfg), **OmegaConf.to_container(cfg.get("decode_table") or
                                                                        OmegaConf.create({}))}
    return out


@functools.cache
def table_task(lmeval_task: str | None) -> str | None:
    """The pipeline task (conf/task/<name>.yaml) whose lm-eval task, for any model family, is `lmeval_task`: the
    key of its decode_table row. None for an lm-eval task no pipeline task runs (the model's decode_defaults)."""
    if not lmeval_task:
        return None
    for path in sorted((CONF / "task").glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        names = {cfg.get("lmeval_task")} | {(v or {}).get("lmeval_task") for v in (cfg.get("families") or {}).values()}
        if lmeval_task in names:
            return str(cfg.get("name") or path.stem)
    return None


def decode_knobs(name: str, model: dict[str, Any] | None = None, task: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DecodeSpec fields of a decode preset, its `${decode_default:...}` / `${oc.select:model.decode_defaults.*}`
    read from `model`: the decode_table row of pipeline task `task` (with kv_cache on, its `cache:` entries), else
    the model's decode_defaults, else the preset's fallback. `overrides` (the user's knobs) win, and a kv_cache
    among them selects the cache row as `decode.kv_cache=true` does.

    gen_length is skipped: it is `${task.gen_length}` there and comes from each request's max_gen_toks here.
    """
    decode_cfg = OmegaConf.load(_preset_file("decode", name, "decode"))
    model = model or {}
    root = OmegaConf.create({"model": {"decode_defaults": model.get("decode_defaults") or {},
                                       "decode_table": model.get("decode_table") or {}},
                             "task": {"name": task}, "decode": decode_cfg})
    if overrides:
        root.decode = OmegaConf.merge(root.decode, overrides)
    return {k: root.decode[k] for k in root.decode
            if k in SPEC_FIELDS and (k != "gen_length" or k in (overrides or {}))}
