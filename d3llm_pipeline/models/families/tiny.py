"""The embedded tiny teacher as a family: the bidirectional GPT-2 that stage=teacher trains (models/tiny.py).

Its checkpoints are ordinary HF dirs with a tokenizer; `require_checkpoint` checks config.json (model_type gpt2),
the weights' safetensors header and the tokenizer, each failure one line naming the file and the command that
makes it. Ids come from the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from d3llm_pipeline.errors import ConfigError, PipelineError, first_line
from d3llm_pipeline.models.families.base import DEFAULT_LORA_TARGETS, Family, SpecialIds
from d3llm_pipeline.models.families.checkpoint import safetensors_problem

REMOTE_ERROR = "model.backend=remote runs a real dLLM's own code; model.family=tiny loads natively (model.backend=native)"


class TinyFamily(Family):
    """GPT-2 with is_causal=False; loaded by models/tiny.py, checked by `require_checkpoint` below."""

    def check(self, path: str | Path, key: str, make_cmd: str, backend: str = "native") -> tuple[Path, dict]:
        if backend != "native":
            raise ConfigError(REMOTE_ERROR)
        local = require_checkpoint(path, key, make_cmd, model_types=(self.model_type,))
        return local, json.loads((local / "config.json").read_text())

    def load(self, path: str | Path, dtype: str = "float32", device: Any = "cpu", attn_implementation: str = "sdpa",
             backend: str = "native", key: str = "model.path"):
        from d3llm_pipeline.models.tiny import load_tiny_teacher

        if backend != "native":
            raise ConfigError(REMOTE_ERROR)
        lm, tokenizer = load_tiny_teacher(path, dtype=dtype, device=device)
        _set_attention(lm, attn_implementation)
        return lm, tokenizer

    def load_checked(self, path: str | Path, key: str, make_cmd: str, dtype: str = "float32", device: Any = "cpu",
                     attn_implementation: str = "sdpa", backend: str = "native"):
        if backend != "native":
            raise ConfigError(REMOTE_ERROR)
        lm, tokenizer = load_checkpoint(path, key, make_cmd, dtype=dtype, device=device)
        _set_attention(lm, attn_implementation)
        return lm, tokenizer


def require_checkpoint(path: str | Path, key: str, make_cmd: str, model_types: tuple[str, ...] = ("gpt2",)) -> Path:
    """An HF checkpoint dir this pipeline can load: config.json (valid, known model_type), weights, tokenizer."""
    path = Path(path)
    fix = f"recreate it with `{make_cmd}` (add stage.overwrite=true if it reuses the broken one)"
    if not (path / "config.json").is_file():
        raise PipelineError(f"{key}={path} holds no checkpoint; create it with `{make_cmd}` (or point {key} at an "
                            "existing checkpoint dir)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path / 'config.json'} ({key}) is not valid JSON (truncated or corrupt: "
                            f"{first_line(err)}); {fix}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in model_types:
        raise PipelineError(f"{path / 'config.json'} ({key}) has model_type {model_type!r}, which model.family=tiny "
                            f"cannot load (it needs {', '.join(model_types)}); point {key} at a checkpoint written "
                            f"by `{make_cmd}`")
    weights = path / "model.safetensors"
    if weights.is_file():
        problem, _ = safetensors_problem(weights)
        if problem:
            raise PipelineError(f"{weights} ({key}) is unreadable: {problem}; {fix}")
    elif not any((path / name).is_file() for name in ("model.safetensors.index.json", "pytorch_model.bin")):
        raise PipelineError(f"{key}={path} holds a config.json but no weights (model.safetensors); {fix}")
    if not (path / "tokenizer.json").is_file():
        raise PipelineError(f"{key}={path} holds no tokenizer.json; {fix}")
    return path


def load_checkpoint(path: str | Path, key: str, make_cmd: str, **kwargs: Any):
    """(adapter, tokenizer) of a checked checkpoint; anything the loaders raise becomes one line naming the dir."""
    require_checkpoint(path, key, make_cmd)
    from d3llm_pipeline.models.tiny import load_tiny_teacher  # (transformers: only once the files look sane)

    try:
        return load_tiny_teacher(path, **kwargs)
    except PipelineError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers / safetensors / tokenizers errors all mean "bad files"
        raise PipelineError(f"cannot load the checkpoint {key}={path}: {type(err).__name__}: {first_line(err)}; "
                            f"recreate it with `{make_cmd}` (stage.overwrite=true) or point {key} at another") from err


def _set_attention(lm, attn_implementation: str) -> None:
    if attn_implementation != lm.model.config._attn_implementation:
        lm.model.set_attn_implementation(attn_implementation)


FAMILY = TinyFamily(
    name="tiny",
    model_type="gpt2",
    display="tiny GPT-2",
    shift_logits=False,
    lora_targets=DEFAULT_LORA_TARGETS,  # GPT-2 names: attention qkv + out, MLP in + out
    lora_fan_in_fan_out=True,  # GPT-2 stores its projections as Conv1D (in, out) matrices
    defaults=SpecialIds(mask=1, eos=2, pad=0),  # tasks/tokenizer.py; the loaded tokenizer's ids are used
    positions=lambda config: config.get("n_positions"),
)
