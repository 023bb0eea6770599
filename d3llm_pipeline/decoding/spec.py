"""What every decoder shares: the decode knobs (`DecodeSpec`), the result, and small batch helpers.

The decoders (semi_ar.py, multi_block.py, prefix_cache.py) import from here and never from each other's
modules, so the package has no import cycle. `DecodeSpec` is the one place the knobs are defined: the config
schema (config/schema.py DecodeConfig) adds only what the stages need around them (name, batch_size) and
`spec_from(decode_cfg)` copies every field the two share.

    spec = DecodeSpec(gen_length=64, block_size=16, rule="d3llm", threshold=0.5, kv_cache=True)
    spec.global_best(lm)   # decode.accept_global_best, or the model family's default when it is None
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from d3llm_pipeline.models.families.base import DecodeDefaults

CACHE_PLANS = ("ours", "reference")
ENTROPY_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode: region and block sizes, selection rule and stopping behaviour."""

    gen_length: int = 64
    block_size: int = 16
    rule: str = "threshold"  # "vanilla" | "threshold" | "d3llm"
    score: str = "entropy"  # "confidence" (higher is better) | "entropy" (lower is better)
    threshold: float = 0.4
    tokens_per_step: int = 1  # vanilla only
    early_stop: bool = True
    max_forwards: int | None = None  # safety cap on forwards per sample; None -> 2 * gen_length
    temperature: float = 0.0  # 0 = argmax; > 0 samples from softmax(logits / T) with counter-based noise
    seed: int = 0  # noise seed (used only when temperature > 0)
    # rule "d3llm" (multi-block, decoding.multi_block): open a block at this progress of the last one ...
    block_add_threshold: float = 0.1
    # ... and make it fully active (forced progress) once its predecessor reaches this progress
    decoded_token_threshold: float = 0.95
    # d3LLM's LLaDA rule: always accept the global min-entropy candidate; None = the model family's default
    accept_global_best: bool | None = None
    kv_cache: bool = False  # rule "d3llm": prefix KV cache with delayed caching and refresh (decoding.prefix_cache)
    cache_delay_iter: int = 2  # d: a completed block joins the cache this many iterations after completing
    refresh_interval: int | None = None  # R: a full forward refreshes the cache every R iterations; None = never
    # "ours" (see prefix_cache.plan_forward) | "reference": the family's official cached decoder's forward plan
    cache_plan: str = "ours"
    entropy_dtype: str = "float32"  # "float64": scores as the official code computes them (reproduction runs)
    # torch.compile the model's forward (dynamic shapes) for decoding: same tokens, first decode pays the compile
    compile: bool = False

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_size

    @property
    def forward_cap(self) -> int:
        return self.max_forwards if self.max_forwards is not None else 2 * self.gen_length

    def global_best(self, model) -> bool:
        """decode.accept_global_best, or the model family's multi-block rule when it is None."""
        if self.accept_global_best is not None:
            return self.accept_global_best
        return decode_defaults(model).accept_global_best


def decode_defaults(model) -> DecodeDefaults:
    """The family behaviour the decoders follow (`lm.decode_defaults`; the tiny family's for plain models)."""
    return getattr(model, "decode_defaults", None) or DecodeDefaults()


@dataclass
class DecodeResult:
    """Outcome of `decode` for a batch of B prompts of length P with G generated positions."""

    sequences: torch.Tensor  # (B, P+G) long: prompt followed by the generation region
    nfe: torch.Tensor  # (B,) long: forward passes each sample took part in
    unmask_step: torch.Tensor  # (B, G) long: 0-based own forward index at which a position was revealed
    tokens: torch.Tensor  # (B,) long: generated tokens before the first EOS
    truncated: torch.Tensor | None = None  # (B,) bool: stopped by max_forwards with MASKs left
    forwarded: torch.Tensor | None = None  # (B,) long: positions run through the model (rule "d3llm" only)


def apply_early_stop(gen: torch.Tensor, unmask: torch.Tensor, step: torch.Tensor, mask_id: int, eos_id: int) -> None:
    """In place: overwrite everything after each row's first revealed EOS with EOS (d3LLM early stop).

    gen, unmask: (A, G); step: (A,) the row's current forward index, recorded for positions that were MASK.
    """
    is_eos = gen == eos_id  # (A, G); a MASK is never EOS, so these are all revealed
    has_eos = is_eos.any(dim=-1, keepdim=True)  # (A, 1)
    first = is_eos.to(torch.uint8).argmax(dim=-1, keepdim=True)  # (A, 1), 0 when there is none
    positions = torch.arange(gen.shape[-1], device=gen.device)[None, :]  # (1, G)
    after = has_eos & (positions > first)  # (A, G)
    newly = after & (gen == mask_id)  # (A, G) revealed by this rule right now
    unmask.copy_(torch.where(newly, step[:, None], unmask))
    gen.masked_fill_(after, eos_id)


def banned_ids(model) -> list[int]:
    """Ids a decoder never predicts: MASK, and PAD unless it doubles as EOS (banning it would forbid stopping)."""
    return [model.mask_token_id] if model.pad_token_id == model.eos_token_id else [model.mask_token_id,
                                                                                   model.pad_token_id]


def takes_keep_count(model, method: str = "logits") -> bool:
    """Whether model.<method> accepts `keep_count` (our adapter does; simple test doubles may not)."""
    import inspect

    params = inspect.signature(getattr(model, method)).parameters
    return "keep_count" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def host_values(*values: torch.Tensor) -> list[int]:
    """Scalars (0-dim) or vectors of ints read in one device -> host copy: a decoder's one sync per forward."""
    flat = torch.cat([v.reshape(-1).long() for v in values])
    return flat.tolist()


def select_rows(t: torch.Tensor, where: torch.Tensor, count: int | None) -> torch.Tensor:
    """t[where] for a bool mask `where` over t's leading dims; by index when its True count is known (no sync)."""
    if count is None:
        return t[where]
    flat = t.reshape(-1, *t.shape[where.dim():])
    return flat.index_select(0, where.reshape(-1).nonzero_static(size=count).squeeze(1))


def active_index(active: torch.Tensor, count: int, batch: int) -> tuple[torch.Tensor, bool]:
    """(indices (A,) of the True rows of active (B,), whether that is every row), A = count known on the host:
    no host sync (nonzero would need one to size its output)."""
    if count == batch:
        return torch.arange(batch, device=active.device), True
    return active.nonzero_static(size=count).squeeze(1), False


def active_rows(t: torch.Tensor, idx: torch.Tensor, everyone: bool) -> torch.Tensor:
    """The rows `idx` of t as a copy, or t itself when every row is active (updated in place, no copy back)."""
    return t if everyone else t.index_select(0, idx)


def build_attention(prompt_attention_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """(B, P+G) mask: the prompt's own mask followed by ones for the generation region, or None.

    None also when the prompts hold no padding (one host read per decode call): transformers' SDPA path skips
    an all-ones mask anyway, but only after reading it on the host at every forward.
    """
    if prompt_attention_mask is None or bool(prompt_attention_mask.all()):
        return None
    ones = torch.ones(prompt_attention_mask.shape[0], gen_length, dtype=prompt_attention_mask.dtype,
                      device=prompt_attention_mask.device)
    return torch.cat([prompt_attention_mask, ones], dim=1)


def spec_from(config: object) -> DecodeSpec:
    """A DecodeSpec from any object with same-named attributes (the decode config section): the fields it has."""
    return DecodeSpec(**{f.name: getattr(config, f.name) for f in fields(DecodeSpec) if hasattr(config, f.name)})
