"""The decode knobs, defined once: `DecodeSpec` (what every decoder reads), its lists of values and its checks.

No torch import here: the config schema (config/schema.py `DecodeConfig` = this spec + the run-level keys `name`
and `batch_size`) and the command line's pre-flight read it. Each knob's default is written only here; the decode
presets (conf/decode/*.yaml) hold only what they change, and a model family's behaviour where the official
decoders differ between families is `DecodeDefaults` (handed to the adapter, read as `lm.decode_defaults`).

    spec = DecodeSpec(gen_length=64, block_size=16, rule="d3llm", threshold=0.5, kv_cache=True)
    spec.global_best(lm)   # decode.accept_global_best, or the model family's default when it is None
    spec = spec_from(decode_cfg)   # the fields a config object shares with the spec
    check_spec(spec)               # the knobs' checks (DecodeConfig runs them), errors naming `decode.<knob>`
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from d3llm_pipeline.errors import check

RULES = ("vanilla", "threshold", "d3llm")  # one token (or tokens_per_step) | every candidate past τ | multi-block
SCORES = ("entropy", "confidence")  # entropy (d3LLM / Dream, lower = surer) | confidence (Fast-dLLM / LLaDA)
CACHE_PLANS = ("ours", "reference")  # which forwards the prefix KV cache runs (decoding/prefix_cache.py)
ENTROPY_DTYPES = ("float32", "float64")  # float64: scores as the official code computes them


@dataclass(frozen=True)
class DecodeDefaults:
    """How a family's official decoders behave where the d3LLM reference code differs between families.

    The decoders read these from the adapter (`lm.decode_defaults`) instead of testing a family name. The
    defaults are the embedded tiny family's (the pipeline's own rules).
    """

    # decode=d3llm with decode.accept_global_best=null: always accept the minimum-entropy candidate of all open
    # blocks (d3LLM's LLaDA `generate_multi_block`); False = only the candidates below τ (Dream's)
    accept_global_best: bool = False
    # an entropy exactly equal to τ is accepted (LLaDA's `entropy > τ -> reject`, i.e. H <= τ); Dream's is H < τ
    inclusive_threshold: bool = False
    # decode.cache_plan=reference: the official cached decoder's scan for blocks to cache stops at the first block
    # still stabilising (LLaDA's `elif delay < d: break`, method.md §5.3); Dream's goes on and stamps later ones
    cache_scan_stops_at_stabilising: bool = True


@dataclass
class DecodeSpec:
    """How to decode: region and block sizes, selection rule and stopping behaviour (the `decode.*` knobs)."""

    gen_length: int = 64  # generation region (the task's; decode presets read ${task.gen_length})
    block_size: int = 16  # semi-AR block / d3llm window (real-model presets: 32, method.md §6)
    rule: str = "threshold"  # RULES
    score: str = "entropy"  # SCORES: "confidence" (higher is better) | "entropy" (lower is better)
    threshold: float = 0.4  # τ: entropy bound in nats (score=entropy), probability (score=confidence)
    tokens_per_step: int = 1  # rule "vanilla" only
    early_stop: bool = True  # once an EOS is decoded, everything after it becomes EOS (method.md §5.4)
    max_forwards: int | None = None  # safety cap on forwards per sample; None -> 2 * gen_length
    temperature: float = 0.0  # 0 = argmax; > 0 samples from softmax(logits / T) with counter-based noise
    seed: int = 0  # noise seed (used only when temperature > 0)
    # rule "d3llm" (multi-block, decoding.multi_block): open a block at this progress of the last one (A) ...
    block_add_threshold: float = 0.1
    # ... and make it fully active (forced progress) once its predecessor reaches this progress (D)
    decoded_token_threshold: float = 0.95
    # d3LLM's LLaDA rule: always accept the global min-entropy candidate; None = the model family's default
    accept_global_best: bool | None = None
    kv_cache: bool = False  # rule "d3llm": prefix KV cache with delayed caching and refresh (method.md §5.3)
    cache_delay_iter: int = 2  # d: a completed block joins the cache this many iterations after completing
    refresh_interval: int | None = None  # R: a full forward refreshes the cache every R iterations; None = never
    # CACHE_PLANS: "reference" (the family's official decoder's plan: fewer positions per forward, the official
    # token ids; benchmarks/kv_cache.py) | "ours" (prefix_cache.plan_forward: R=1 is uncached decoding)
    cache_plan: str = "reference"
    entropy_dtype: str = "float32"  # ENTROPY_DTYPES
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


def check_spec(spec: DecodeSpec) -> None:
    """The decode knobs' checks, each error naming its config key (`decode.<knob>`): run on every decode section
    (config/schema.py DecodeConfig). A DecodeSpec built in code may use limits these forbid (τ = ±inf, A = 0) that
    the decoders handle."""
    check(spec.rule in RULES, f"decode.rule must be one of {', '.join(RULES)}, got {spec.rule!r}")
    check(spec.score in SCORES, f"decode.score must be entropy or confidence, got {spec.score!r}")
    check(spec.gen_length > 0, f"decode.gen_length must be > 0, got {spec.gen_length}")
    check(spec.block_size > 0, f"decode.block_size must be > 0, got {spec.block_size}")
    check(spec.gen_length % spec.block_size == 0,
          f"decode.block_size ({spec.block_size}) must divide decode.gen_length ({spec.gen_length}); "
          f"try decode.block_size={math.gcd(spec.gen_length, spec.block_size) or 1}")
    check(1 <= spec.tokens_per_step <= spec.block_size,
          f"decode.tokens_per_step must be in [1, decode.block_size={spec.block_size}], got {spec.tokens_per_step}")
    check(spec.max_forwards is None or spec.max_forwards >= 1,
          f"decode.max_forwards must be >= 1 or null (2 x gen_length), got {spec.max_forwards}")
    check(spec.rule != "d3llm" or spec.score == "entropy", "decode.score must be entropy for decode.rule=d3llm")
    for key in ("block_add_threshold", "decoded_token_threshold"):  # fractions, checked even where unused
        value = getattr(spec, key)
        check(0 < value <= 1, f"decode.{key} must be in (0, 1], got {value}")
    check(not spec.kv_cache or spec.rule == "d3llm",
          f"decode.kv_cache=true needs decode.rule=d3llm (decode=d3llm), got rule={spec.rule!r}")
    check(spec.cache_delay_iter >= 0, f"decode.cache_delay_iter must be >= 0, got {spec.cache_delay_iter}")
    check(spec.refresh_interval is None or spec.refresh_interval >= 1,
          f"decode.refresh_interval must be >= 1 or null (never), got {spec.refresh_interval}")
    check(spec.cache_plan in CACHE_PLANS,
          f"decode.cache_plan must be one of {', '.join(CACHE_PLANS)}, got {spec.cache_plan!r}")
    check(spec.temperature >= 0, f"decode.temperature must be >= 0 (0: greedy), got {spec.temperature}")
    check(spec.seed >= 0, f"decode.seed must be >= 0, got {spec.seed}")
    check(spec.entropy_dtype in ENTROPY_DTYPES,
          f"decode.entropy_dtype must be one of {', '.join(ENTROPY_DTYPES)}, got {spec.entropy_dtype!r}")
    if spec.rule == "vanilla":
        return
    if spec.score == "entropy":
        check(spec.threshold > 0,
              f"decode.threshold must be > 0 for score=entropy (an entropy bound in nats), got {spec.threshold}")
    else:
        check(0 < spec.threshold < 1,
              f"decode.threshold must be in (0, 1) for score=confidence (a probability), got {spec.threshold}")



def decode_defaults(model) -> DecodeDefaults:
    """The family behaviour the decoders follow (`lm.decode_defaults`; the tiny family's for plain models)."""
    return getattr(model, "decode_defaults", None) or DecodeDefaults()


def spec_from(config: object) -> DecodeSpec:
    """A DecodeSpec from any object with same-named attributes (the decode config section): the fields it has."""
    return DecodeSpec(**{f.name: getattr(config, f.name) for f in fields(DecodeSpec) if hasattr(config, f.name)})
