"""Decode presets resolved one way, for a Hydra run and for the lm-eval model alike (method.md §6).

A decode preset (conf/decode/<name>.yaml) takes some knobs from the model preset through
`${decode_default:<key>[,<fallback>]}`; the resolver calls `model_decode_value`, a pure function of the model
section, the task's name and decode.kv_cache. `resolve_decode` is the same resolution for callers outside a Hydra
run (the lm-eval model): it composes the same config files with the same resolver.

    model_decode_value("threshold", model_section, "humaneval", kv_cache=False, fallback=0.5)   # -> 0.5
    decode = resolve_decode("d3llm", model="d3llm_llada", task="mbpp", overrides={"kv_cache": True})
    decode.threshold, decode.cache_delay_iter    # 0.4, 1  (conf/decode_table/llada.yaml's mbpp row)
    settings = model_section("d3llm_dream")      # the preset's path, family, dtype, decode_defaults ...

The order (the model preset's `decode_table.<task>.cache.<key>` with kv_cache, then `decode_table.<task>.<key>`,
then `decode_defaults.<key>`, then the preset's fallback, then the schema's default) is written only in
`model_decode_value`; a `decode.<key>=` override replaces the whole lookup.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from d3llm_pipeline.errors import ConfigError

_MISSING = object()
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the package's conf (a link to the top-level conf/)


def model_decode_value(key: str, model: Mapping[str, Any], task: str | None, kv_cache: bool,
                       fallback: Any = _MISSING) -> Any:
    """The value decode knob `key` takes for this model section and task (see the module docstring)."""
    table = model.get("decode_table") or {}
    row = table.get(task) if task else None
    sources = []
    if row is not None:
        if kv_cache:
            sources.append(row.get("cache") or {})
        sources.append(row)
    sources.append(model.get("decode_defaults") or {})
    for source in sources:
        if key in source:  # present, even as null: refresh_interval null = never refresh
            return source[key]
    if fallback is not _MISSING:
        return fallback
    from d3llm_pipeline.decoding.spec import DecodeSpec

    return {f.name: f.default for f in dataclasses.fields(DecodeSpec)}[key]


def decode_default_resolver(key: str, fallback: Any = _MISSING, *, _root_: DictConfig) -> Any:
    """`${decode_default:<key>[,<fallback>]}` in a decode preset: model_decode_value on the composed config."""
    model = _root_.get("model") or {}
    return model_decode_value(key, model, OmegaConf.select(_root_, "task.name", default=None),
                              bool(OmegaConf.select(_root_, "decode.kv_cache", default=False)), fallback)


def _compose(overrides: list[str]) -> DictConfig:
    """The whole config composed from the package's conf/ (inside a running Hydra app: its own search path), a copy
    the caller may change."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    return copy.deepcopy(_compose_standalone(tuple(overrides)))


@functools.lru_cache(maxsize=64)
def _compose_standalone(overrides: tuple[str, ...]) -> DictConfig:
    """Composed once per override list outside a Hydra app (the lm-eval model resolves a preset per task)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _preset(group: str, name: str, key: str) -> str:
    known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
    if name not in known:
        raise ConfigError(f"{key}={name!r} is not a preset (a conf/{group} name or, for a model, a .yaml path); "
                          f"use one of: {', '.join(known)}")
    return f"{group}={name}"


def _composed(decode: str | None, model: str | None, task: str | None) -> DictConfig:
    """The config of `decode=<decode> model=<model> task=<task>`; a model preset given as a .yaml path replaces the
    model section (its own defaults list, if any, is not applied)."""
    from d3llm_pipeline.config.schema import ModelConfig

    file = model if model and model.endswith((".yaml", ".yml")) else None
    if file and not Path(file).is_file():
        raise ConfigError(f"preset={model!r} is not a preset: no such file")
    overrides = [_preset("decode", decode, "decode")] if decode else []
    overrides += [_preset("model", model, "preset")] if model and not file else []
    overrides += [_preset("task", task, "task")] if task else []
    cfg = _compose(overrides)
    if file:
        loaded = OmegaConf.load(file)
        loaded.pop("defaults", None)
        cfg.model = OmegaConf.merge(OmegaConf.structured(ModelConfig), loaded)
    return cfg


def model_section(model: str) -> dict[str, Any]:
    """A model preset (conf/model name or .yaml path) as plain values: path, family, dtype, decode_defaults,
    decode_table, ..."""
    cfg = _composed(None, model, None)
    return OmegaConf.to_container(cfg.model, resolve=True)


def resolve_decode(decode: str, model: str | None = None, task: str | None = None,
                   overrides: Mapping[str, Any] | None = None):
    """The validated `decode` section (config/schema.py DecodeConfig) of decode preset `decode` with model preset
    `model` and pipeline task `task` (conf/task name; None: the default task, whose name keys no decode_table row),
    the user's `overrides` (decode knobs) winning as `decode.<key>=` does. One-line ConfigError on a bad knob."""
    from d3llm_pipeline.config.schema import DecodeConfig, load_section

    cfg = _composed(decode, model, task)
    if overrides:
        known = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown decode knob(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        cfg.decode = OmegaConf.merge(cfg.decode, dict(overrides))
    return load_section(cfg.decode, DecodeConfig, "decode")


@functools.cache
def pipeline_task_of(lmeval_task: str | None) -> str | None:
    """The pipeline task (conf/task/<name>.yaml) that runs lm-eval task `lmeval_task` for some model family: the
    key of its decode_table row. None for an lm-eval task no pipeline task runs (the model's decode_defaults)."""
    if not lmeval_task:
        return None
    for path in sorted((CONF_DIR / "task").glob("*.yaml")):
        if path.stem.startswith("_"):
            continue
        task = _composed(None, None, path.stem).task
        names = {task.get("lmeval_task")} | {(v or {}).get("lmeval_task") for v in (task.get("families") or {}).values()}
        if lmeval_task in names:
            return str(task.name)
    return None


def task_metric(task: str) -> str:
    """The metric a pipeline task (conf/task name) scores with: its `metric` key."""
    return str(_composed(None, None, task).task.metric)
