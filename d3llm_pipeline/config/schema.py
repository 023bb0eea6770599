"""Typed config schemas and their validation, one dataclass per config group.

Hydra hands stages a DictConfig, on which dataclass `__post_init__` never runs. Each stage therefore converts
the section it uses with `load_section(cfg.decode, DecodeConfig, "decode")`, which merges it into the schema
(type errors) and builds the dataclass (range checks in `__post_init__`). Every error is a `ConfigError`
whose message names the key to change and how, e.g.

    decode.threshold must be > 0 for score=entropy (an entropy bound in nats), got -1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class PipelineError(Exception):
    """A user-facing error: its message says what is wrong and what to do; shown as one line, exit code 2."""


class ConfigError(PipelineError, ValueError):
    """A configuration error; the message names the key and the fix."""


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an exception's text (library errors run to many lines), for one-line errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_counts(section: object, prefix: str, *keys: str) -> None:
    """Each named field must be an integer >= 1 (sizes, steps, intervals)."""
    for key in keys:
        value = getattr(section, key)
        check(value >= 1, f"{prefix}.{key} must be >= 1, got {value}")


def check_nonneg(section: object, prefix: str, *keys: str) -> None:
    """Each named field must be >= 0 (weight decay, clipping norm, warm-up steps; 0 = off)."""
    for key in keys:
        check(getattr(section, key) >= 0, f"{prefix}.{key} must be >= 0, got {getattr(section, key)}")


@dataclass
class DecodeConfig:
    name: str = "threshold"
    rule: str = "threshold"  # vanilla: fixed tokens per step | threshold: all candidates past τ
    score: str = "entropy"  # entropy (d3LLM / Dream, lower = surer) | confidence (Fast-dLLM / LLaDA)
    threshold: float = 0.4
    tokens_per_step: int = 1
    block_size: int = 16
    gen_length: int = 64
    early_stop: bool = True
    batch_size: int = 64
    block_add_threshold: float = 0.1  # rule=d3llm: open the next block at this progress of the last one
    decoded_token_threshold: float = 0.95  # rule=d3llm: a block is fully active once its predecessor is this done
    # The decode knobs themselves are documented once, on decoding/spec.py DecodeSpec (same names and defaults).
    accept_global_best: bool | None = None  # rule=d3llm: LLaDA rule; null = the model family's default
    kv_cache: bool = False  # rule=d3llm: prefix KV cache with delayed caching and refresh (method.md §5.3)
    cache_delay_iter: int = 2  # a completed block joins the cache this many iterations after completing
    refresh_interval: int | None = None  # every this many iterations a full forward refreshes the cache; null = never
    cache_plan: str = "ours"  # ours | reference (the family's official cached decoder's forward plan)
    entropy_dtype: str = "float32"  # float32 | float64 (scores as the official code computes them)
    compile: bool = False  # torch.compile the model forward for decoding (same tokens; first decode compiles)
    temperature: float = 0.0  # 0: greedy; > 0: sampled with counter-based noise (same draws batched or not)
    seed: int = 0  # the sampling noise's seed (temperature > 0 only)

    def __post_init__(self) -> None:
        check(self.rule in ("vanilla", "threshold", "d3llm"),
               f"decode.rule must be vanilla, threshold or d3llm, got {self.rule!r}")
        check(self.score in ("entropy", "confidence"), f"decode.score must be entropy or confidence, got {self.score!r}")
        check(self.gen_length > 0, f"decode.gen_length must be > 0, got {self.gen_length}")
        check(self.block_size > 0, f"decode.block_size must be > 0, got {self.block_size}")
        check(
            self.gen_length % self.block_size == 0,
            f"decode.block_size ({self.block_size}) must divide decode.gen_length ({self.gen_length}); "
            f"try decode.block_size={math.gcd(self.gen_length, self.block_size) or 1}",
        )
        check(
            1 <= self.tokens_per_step <= self.block_size,
            f"decode.tokens_per_step must be in [1, decode.block_size={self.block_size}], got {self.tokens_per_step}",
        )
        check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")
        check(self.rule != "d3llm" or self.score == "entropy", "decode.score must be entropy for decode.rule=d3llm")
        for key in ("block_add_threshold", "decoded_token_threshold"):  # fractions, checked even where unused
            value = getattr(self, key)
            check(0 < value <= 1, f"decode.{key} must be in (0, 1], got {value}")
        check(not self.kv_cache or self.rule == "d3llm",
               f"decode.kv_cache=true needs decode.rule=d3llm (decode=d3llm), got rule={self.rule!r}")
        check(self.cache_delay_iter >= 0, f"decode.cache_delay_iter must be >= 0, got {self.cache_delay_iter}")
        check(self.refresh_interval is None or self.refresh_interval >= 1,
               f"decode.refresh_interval must be >= 1 or null (never), got {self.refresh_interval}")
        check(self.cache_plan in ("ours", "reference"),
               f"decode.cache_plan must be ours or reference, got {self.cache_plan!r}")
        check(self.temperature >= 0, f"decode.temperature must be >= 0 (0: greedy), got {self.temperature}")
        check(self.seed >= 0, f"decode.seed must be >= 0, got {self.seed}")
        check(self.entropy_dtype in ("float32", "float64"),
               f"decode.entropy_dtype must be float32 or float64, got {self.entropy_dtype!r}")
        if self.rule in ("threshold", "d3llm"):
            if self.score == "entropy":
                check(
                    self.threshold > 0,
                    f"decode.threshold must be > 0 for score=entropy (an entropy bound in nats), got {self.threshold}",
                )
            else:
                check(
                    0 < self.threshold < 1,
                    f"decode.threshold must be in (0, 1) for score=confidence (a probability), got {self.threshold}",
                )


@dataclass
class ArithTaskConfig:
    name: str = "arith"
    seed: int = 1234
    prompt_length: int = 24
    gen_length: int = 64
    min_steps: int = 2
    max_steps: int = 5
    n_train: int = 50000
    n_val: int = 200
    n_test: int = 1000
    problems_per_sample: int = 1  # > 1: k independent problems per sample (task=arith_long, tasks/arith_long.py)

    def __post_init__(self) -> None:
        check(1 <= self.min_steps <= self.max_steps, "task.min_steps must be >= 1 and <= task.max_steps, "
               f"got {self.min_steps}..{self.max_steps}")
        check(self.problems_per_sample >= 1, f"task.problems_per_sample must be >= 1, got {self.problems_per_sample}")
        from d3llm_pipeline.tasks.arith import sample_prompt_tokens, sample_response_tokens

        k, of = self.problems_per_sample, f"task.max_steps={self.max_steps}" + (
            f", task.problems_per_sample={self.problems_per_sample}" if self.problems_per_sample > 1 else "")
        need = sample_response_tokens(self.max_steps, k) + 1  # the longest response plus at least one EOS
        check(self.gen_length >= need, f"task.gen_length must be >= {need} for {of}, got {self.gen_length}")
        need = sample_prompt_tokens(self.max_steps, k)
        check(self.prompt_length >= need, f"task.prompt_length must be >= {need} for {of}, got {self.prompt_length}")
        check_counts(self, "task", "n_train", "n_val", "n_test")


@dataclass
class TinyArchConfig:
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    init_std: float = 0.1
    embed_init_std: float | None = None  # token + position embeddings; None = init_std

    def __post_init__(self) -> None:
        check_counts(self, "model.arch", "n_embd", "n_layer", "n_head")
        check(self.n_embd % self.n_head == 0, f"model.arch.n_head ({self.n_head}) must divide model.arch.n_embd "
               f"({self.n_embd})")
        check(0.0 <= self.dropout < 1.0, f"model.arch.dropout must be in [0, 1), got {self.dropout}")
        check(self.init_std > 0, f"model.arch.init_std must be > 0, got {self.init_std}")
        check(self.embed_init_std is None or self.embed_init_std > 0,
               f"model.arch.embed_init_std must be > 0 or null (= init_std), got {self.embed_init_std}")


# model.family values = the registry in d3llm_pipeline/models/families (kept literal here: no torch import)
MODEL_FAMILIES = ("tiny", "llada", "dream")


@dataclass
class ModelDecodeDefaults:
    """A model preset's decode=d3llm settings (method.md §6); conf/decode/d3llm.yaml reads them through
    `${oc.select:model.decode_defaults.<key>,<embedded default>}`, so a `decode.<key>=` override still wins.
    null / absent: the embedded default of conf/decode/d3llm.yaml."""

    threshold: float | None = None  # τ
    block_size: int | None = None  # every decoder (real models: 32, method.md §6)
    block_add_threshold: float | None = None  # A
    decoded_token_threshold: float | None = None  # D
    early_stop: bool | None = None
    cache_delay_iter: int | None = None  # d (used with decode.kv_cache=true)
    refresh_interval: int | None = None  # R (null: never refresh)
    temperature: float | None = None  # sampling temperature of the official script (null / absent: greedy)


@dataclass
class ModelConfig:
    name: str = "tiny-teacher"
    family: str = "tiny"  # tiny (embedded GPT-2 teacher) | llada | dream (d3llm_pipeline/models/families/)
    path: str = "outputs/artifacts/teacher"  # a local checkpoint dir, or a Hub id (owner/name) in the HF cache
    dtype: str = "float32"
    attn_implementation: str = "sdpa"  # sdpa | eager (both bidirectional)
    backend: str = "native"  # native: stock transformers modules, no remote code | remote: trust_remote_code=True
    arch: TinyArchConfig = field(default_factory=TinyArchConfig)
    decode_defaults: ModelDecodeDefaults = field(default_factory=ModelDecodeDefaults)  # method.md §6 per preset
    # task.name -> decode_defaults keys for that benchmark (+ `cache:` for the kv-cache run); conf/decode_table/
    decode_table: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.family in MODEL_FAMILIES,
               f"model.family must be one of: {', '.join(MODEL_FAMILIES)}, got {self.family!r}")
        check(self.dtype in ("float32", "float64", "bfloat16", "float16"),
               f"model.dtype must be float32, float64, bfloat16 or float16, got {self.dtype!r}")
        check(self.attn_implementation in ("sdpa", "eager"),
               f"model.attn_implementation must be sdpa or eager, got {self.attn_implementation!r}")
        check(self.backend in ("native", "remote"), f"model.backend must be native or remote, got {self.backend!r}")
        knobs = {f.name for f in fields(ModelDecodeDefaults)}
        for task, row in self.decode_table.items():
            row = row if isinstance(row, dict) else {}
            bad = sorted(set(row) - knobs - {"cache"}) + sorted(set(row.get("cache") or {}) - knobs)
            check(not bad, f"model.decode_table.{task} has unknown key(s) {bad}; valid: {', '.join(sorted(knobs))} "
                  "and cache (the same keys, for the decode.kv_cache=true run)")


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])

    def __post_init__(self) -> None:
        check(self.r >= 1, f"distill.lora.r must be >= 1, got {self.r}")
        check(self.alpha > 0, f"distill.lora.alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"distill.lora.dropout must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) >= 1, "distill.lora.target_modules must name at least one module")


@dataclass
class DistillLossSection:
    complementary: bool = True
    entropy_weight: float = 2.0
    entropy_temperature: float = 0.5
    entropy_on_complementary: bool = False
    scale: float = 0.25

    def __post_init__(self) -> None:
        check(self.entropy_weight >= 0, f"distill.loss.entropy_weight must be >= 0, got {self.entropy_weight}")
        check(self.entropy_temperature > 0,
               f"distill.loss.entropy_temperature must be > 0, got {self.entropy_temperature}")
        check(self.scale > 0, f"distill.loss.scale must be > 0, got {self.scale}")


@dataclass
class CurriculumConfig:
    mask_ratio: str = "linear"  # linear: lower bound rises r_min -> r_max over training | off: fixed range
    r_min: float = 0.0
    r_max: float = 0.8
    window: str = "epochs"  # epochs: per-epoch list, interpolated within each epoch | off: fixed_window
    window_sizes: list[int] = field(default_factory=lambda: [8, 16])
    fixed_window: int = 16

    def __post_init__(self) -> None:
        check(self.mask_ratio in ("linear", "off"),
               f"distill.curriculum.mask_ratio must be linear or off, got {self.mask_ratio!r}")
        check(self.window in ("epochs", "off"), f"distill.curriculum.window must be epochs or off, got {self.window!r}")
        check(0 <= self.r_min <= self.r_max <= 1,
               f"distill.curriculum needs 0 <= r_min <= r_max <= 1, got r_min={self.r_min} r_max={self.r_max}")
        check(len(self.window_sizes) >= 1 and min(self.window_sizes) >= 1,
               f"distill.curriculum.window_sizes must be positive sizes, got {self.window_sizes}")
        check(self.fixed_window >= 1, f"distill.curriculum.fixed_window must be >= 1, got {self.fixed_window}")


@dataclass
class DistillConfig:
    name: str = "d3llm"
    masking: str = "trajectory"  # trajectory (d3LLM) | random (the naive-random-mask baseline, dParallel)
    targets: str = "teacher"  # teacher (self-distillation on its own outputs) | reference (the task's answers)
    only_correct: bool = True  # keep only trajectories whose answer the teacher got right
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: DistillLossSection = field(default_factory=DistillLossSection)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    def __post_init__(self) -> None:
        check(self.masking in ("trajectory", "random"),
               f"distill.masking must be trajectory or random, got {self.masking!r}")
        check(self.targets in ("teacher", "reference"),
               f"distill.targets must be teacher or reference, got {self.targets!r}")


T = TypeVar("T")


def load_section(section: DictConfig | dict[str, Any], schema: type[T], key: str) -> T:
    """Validate one config section against its dataclass schema; raise ConfigError naming `key.<field>`."""
    try:
        data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve (full_key is absolute here)
        raise ConfigError(f"{getattr(err, 'full_key', None) or key}: {str(err).splitlines()[0]}") from None
    known = {f.name for f in fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{key}.{u}' for u in unknown)}; "
                          f"valid keys: {', '.join(sorted(known))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(merged)  # runs __post_init__
    except OmegaConfBaseException as err:
        full_key = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{full_key}: {err.msg if hasattr(err, 'msg') else err}".splitlines()[0]) from None
