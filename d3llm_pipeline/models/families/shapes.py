"""The published architectures of the real presets (LLaDA-8B, Dream-7B), without their weights.

Benchmarks and the memory estimate need an 8B-shaped model, not an 8B checkpoint: each family holds its released
checkpoint's config.json fields that set shapes (`Family.released_config`), `official_config`
applies smaller overrides (a tiny model with the same code path for CPU smoke runs), `meta_model_of` builds the
native module on the meta device (no storage) and `random_model` materialises it with random weights.

    from d3llm_pipeline.models.families.shapes import random_model, meta_model_of
    lm = random_model("llada_8b_instruct", dtype="bfloat16", device="cuda")      # an adapter, 8.02 B parameters
    lm = random_model("dream_7b_instruct", layers=2, hidden=64, vocab=4096)     # a CPU-sized one, same code
    n = sum(p.numel() for p in meta_model_of("llada_8b_instruct").parameters()) # 8,015,765,504
"""

from __future__ import annotations

from typing import Any

import torch

# The model presets whose architecture is a family's released one (conf/model/<preset>.yaml), besides the family
# names themselves; each family's shapes are its own (families/<family>.py: released_config, shape_fields).
ALIASES = {"llada_8b_instruct": "llada", "d3llm_llada": "llada", "dparallel_llada": "llada",
           "dream_7b_instruct": "dream", "d3llm_dream": "dream"}


def _released() -> dict[str, str]:
    """Every name official_config takes -> its family: the families with a released architecture, and ALIASES."""
    from d3llm_pipeline.models.families import FAMILIES

    return {**{name: name for name, f in FAMILIES.items() if f.released_config}, **ALIASES}


def preset_names() -> list[str]:
    return sorted(_released())


def official_config(preset: str, layers: int | None = None, hidden: int | None = None, vocab: int | None = None,
                    heads: int | None = None) -> tuple[str, dict[str, Any]]:
    """(family name, official config.json dict) of a preset, with optional smaller shapes.

    hidden scales the MLP with it (same ratio) and keeps the head size when `heads` is not given (at least 1
    head; Dream's kv heads keep their 7:1 grouping where they divide). A vocabulary smaller than the family's
    special ids moves MASK to vocab-1 and EOS = PAD to vocab-2."""
    from d3llm_pipeline.models.families import get_family

    family = _released().get(preset)
    if family is None:
        raise ValueError(f"unknown model preset {preset!r}; choose one of: {', '.join(preset_names())}")
    base = get_family(family).released_config
    config = dict(base)
    f_layers, f_hidden, f_heads, f_kv, f_mlp, f_vocab = get_family(family).shape_fields
    if layers is not None:
        config[f_layers] = layers
    if hidden is not None:
        head_dim = base[f_hidden] // base[f_heads]
        n_heads = heads or max(1, hidden // head_dim)
        if hidden % n_heads:
            raise ValueError(f"--hidden {hidden} is not a multiple of its {n_heads} heads; pass --heads")
        group = base[f_heads] // base[f_kv]
        config.update({f_hidden: hidden, f_heads: n_heads, f_kv: n_heads // group if n_heads % group == 0 else n_heads,
                       f_mlp: base[f_mlp] * hidden // base[f_hidden]})
    if vocab is not None:
        config.update({f: vocab for f in f_vocab})
        ids = get_family(family).defaults
        if max(ids.mask, ids.eos, ids.pad) >= vocab:  # keep the special ids inside a smaller vocabulary
            config.update({"mask_token_id": vocab - 1, "eos_token_id": vocab - 2, "pad_token_id": vocab - 2})
    return family, config


def meta_model_of(preset: str, attn_implementation: str = "sdpa", **shape) -> torch.nn.Module:
    """The native transformers module of a preset on the meta device (parameter shapes, no storage)."""
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.models.families.native import meta_model

    family, config = official_config(preset, **shape)
    return meta_model(get_family(family).build_config(config), attn_implementation)


def random_model(preset: str, dtype: str = "bfloat16", device: Any = "cpu", seed: int = 0,
                 attn_implementation: str = "sdpa", **shape):
    """A DiffusionLM adapter of the preset's architecture with N(0, 0.02) weights, in `dtype` on `device`."""
    from d3llm_pipeline.models.adapter import HFDiffusionAdapter
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.models.families.base import torch_dtype
    from d3llm_pipeline.models.families.native import rebuild_buffers

    family_name, config = official_config(preset, **shape)
    family = get_family(family_name)
    device = torch.device(device)
    model = meta_model_of(preset, attn_implementation, **shape).to_empty(device=device).to(torch_dtype(dtype))
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=gen)
    rebuild_buffers(model, device, every=True)  # to_empty left the RoPE tables as uninitialised memory
    ids = family.special_ids(config)
    return HFDiffusionAdapter(model.eval(), ids.mask, ids.eos, ids.pad, family.shift_logits, eot_token_id=ids.eot,
                              decode_defaults=family.decode_defaults)
