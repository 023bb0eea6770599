"""The embedded tiny teacher as a family: the bidirectional GPT-2 that stage=teacher trains (models/tiny.py).

Its checkpoints are ordinary HF dirs with a tokenizer; the stage checks (stages/checks.py: config.json, weights,
tokenizer, model_type gpt2) and their one-line errors apply as they are. Ids come from the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from d3llm_pipeline.config.schema import ConfigError
from d3llm_pipeline.models.families.base import Family, SpecialIds

REMOTE_ERROR = "model.backend=remote runs a real dLLM's own code; model.family=tiny loads natively (model.backend=native)"


class TinyFamily(Family):
    """GPT-2 with is_causal=False; loaded by models/tiny.py, checked by stages/checks.py."""

    def check(self, path: str | Path, key: str, make_cmd: str, backend: str = "native") -> tuple[Path, dict]:
        from d3llm_pipeline.stages.checks import require_checkpoint

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
        from d3llm_pipeline.stages.checks import load_checkpoint

        if backend != "native":
            raise ConfigError(REMOTE_ERROR)
        lm, tokenizer = load_checkpoint(path, key, make_cmd, dtype=dtype, device=device)
        _set_attention(lm, attn_implementation)
        return lm, tokenizer


def _set_attention(lm, attn_implementation: str) -> None:
    if attn_implementation != lm.model.config._attn_implementation:
        lm.model.set_attn_implementation(attn_implementation)


FAMILY = TinyFamily(
    name="tiny",
    model_type="gpt2",
    display="tiny GPT-2",
    shift_logits=False,
    lora_targets=("c_attn", "c_proj", "c_fc"),  # GPT-2 names: attention qkv + out, MLP in + out
    lora_fan_in_fan_out=True,  # GPT-2 stores its projections as Conv1D (in, out) matrices
    defaults=SpecialIds(mask=1, eos=2, pad=0),  # tasks/tokenizer.py; the loaded tokenizer's ids are used
    positions=lambda config: config.get("n_positions"),
)
