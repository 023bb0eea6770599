"""Typed config schemas and their validation, one dataclass per config group: the one place each setting's default
is written (config/store.py registers them with Hydra's ConfigStore; conf/<group>/*.yaml hold only differences).

The `decode` schema is the decoder's own spec (decoding/spec.py) plus two run-level keys; a `task` section's schema
is its kind's class (tasks/base.py); the stages' schemas are config/stage_schemas.py. Hydra hands stages a
DictConfig, on which dataclass `__post_init__` never runs, so each stage converts the section it uses with
`load_section(cfg.decode, DecodeConfig, "decode")` (or `load_task(cfg.task)`), which merges it into the schema
(type errors) and builds the dataclass (range checks in `__post_init__`). Every error is a `ConfigError` whose
message names the key to change and how, e.g.

    decode.threshold must be > 0 for score=entropy (an entropy bound in nats), got -1.0
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from d3llm_pipeline.decoding.spec import RULES, DecodeSpec, check_spec
from d3llm_pipeline.errors import ConfigError, check
from d3llm_pipeline.models.families import EMBEDDED_FAMILY, FAMILIES
from d3llm_pipeline.models.families.base import DEFAULT_LORA_TARGETS, DTYPE_BYTES


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
class DecodeConfig(DecodeSpec):
    """The `decode` section: the decoder's own knobs (decoding/spec.py DecodeSpec, where each is defined and
    checked) plus the run-level keys. conf/decode/*.yaml hold only what a preset changes."""

    name: str = "threshold"  # the preset's name (labels curves and sweep dirs)
    batch_size: int = 64  # prompts decoded together

    def __post_init__(self) -> None:
        check_spec(self)
        check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")


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


# The decode knobs a model preset may set for its family and benchmarks (method.md §6), in `model.decode_defaults`
# (GSM8K-CoT's, and every task's without a row) and `model.decode_table.<task.name>` (+ `cache:` for the kv-cache
# run); decode presets read them through ${decode_default:...} (config/decode_presets.py). A key set to null there
# means null (refresh_interval null: never refresh); an absent key falls through to the next source.
MODEL_DECODE_KNOBS = ("threshold", "block_size", "block_add_threshold", "decoded_token_threshold", "early_stop",
                      "cache_delay_iter", "refresh_interval", "temperature")


@dataclass
class ModelConfig:
    name: str = "tiny-teacher"
    family: str = EMBEDDED_FAMILY  # tiny (embedded GPT-2 teacher) | llada | dream (models/families: FAMILIES)
    path: str = "${paths.artifacts_dir}/teacher"  # a local checkpoint dir, or a Hub id (owner/name) in the HF cache
    dtype: str = "float32"
    attn_implementation: str = "sdpa"  # sdpa | eager (both bidirectional)
    backend: str = "native"  # native: stock transformers modules, no remote code | remote: trust_remote_code=True
    arch: TinyArchConfig = field(default_factory=TinyArchConfig)
    decode_defaults: dict[str, Any] = field(default_factory=dict)  # MODEL_DECODE_KNOBS -> value (method.md §6)
    # task.name -> decode_defaults keys for that benchmark (+ `cache:` for the kv-cache run); conf/decode_table/
    decode_table: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.family in FAMILIES, f"model.family must be one of: {', '.join(FAMILIES)}, got {self.family!r}")
        check(self.dtype in DTYPE_BYTES, f"model.dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        check(self.attn_implementation in ("sdpa", "eager"),
               f"model.attn_implementation must be sdpa or eager, got {self.attn_implementation!r}")
        check(self.backend in ("native", "remote"), f"model.backend must be native or remote, got {self.backend!r}")
        knobs = set(MODEL_DECODE_KNOBS)
        bad = sorted(set(self.decode_defaults) - knobs)
        check(not bad, f"model.decode_defaults has unknown key(s) {bad}; valid: {', '.join(MODEL_DECODE_KNOBS)}")
        for task, row in self.decode_table.items():
            row = row if isinstance(row, dict) else {}
            bad = sorted(set(row) - knobs - {"cache"}) + sorted(set(row.get("cache") or {}) - knobs)
            check(not bad, f"model.decode_table.{task} has unknown key(s) {bad}; valid: {', '.join(sorted(knobs))} "
                  "and cache (the same keys, for the decode.kv_cache=true run)")


@dataclass
class LoraConfig:
    r: int = 16  # the tiny teacher is 128 wide; d3LLM uses r=256 on 4096-wide LLaDA / Dream
    alpha: int = 32
    dropout: float = 0.0
    # the default (DEFAULT_LORA_TARGETS, the tiny teacher's GPT-2 projections) means "the model family's own"
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        check(self.r >= 1, f"distill.lora.r must be >= 1, got {self.r}")
        check(self.alpha > 0, f"distill.lora.alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"distill.lora.dropout must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) >= 1, "distill.lora.target_modules must name at least one module")


@dataclass
class DistillLossSection:
    complementary: bool = True  # second pass on the complementary window mask (dParallel / d3LLM)
    entropy_weight: float = 2.0  # d3LLM LLaDA recipe
    entropy_temperature: float = 0.5
    entropy_on_complementary: bool = False  # entropy on the primary pass only (d3LLM LLaDA)
    scale: float = 0.25  # d3LLM's constant /4

    def __post_init__(self) -> None:
        check(self.entropy_weight >= 0, f"distill.loss.entropy_weight must be >= 0, got {self.entropy_weight}")
        check(self.entropy_temperature > 0,
               f"distill.loss.entropy_temperature must be > 0, got {self.entropy_temperature}")
        check(self.scale > 0, f"distill.loss.scale must be > 0, got {self.scale}")


@dataclass
class CurriculumConfig:
    # linear: the lower bound rises r_min -> r_max over training, r ~ U(bound, r_max) (method.md §4.1) | off: fixed
    mask_ratio: str = "linear"
    r_min: float = 0.0
    r_max: float = 0.8
    # epochs: the window grows with the epoch (per-epoch list, interpolated within each epoch), ending at the decode
    # block size (16 here) | off: fixed_window
    window: str = "epochs"
    # d3LLM LLaDA's shape [16,16,24,24,32,32], halved for blocks of 16
    window_sizes: list[int] = field(default_factory=lambda: [8, 8, 12, 12, 16, 16])
    fixed_window: int = 16  # used when window=off

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
class DistillOptimConfig:
    """A recipe's optimisation. stage=distill takes these as its defaults (`stage.lr: ${distill.optim.lr}`, ...), so
    choosing a recipe (distill=llada) sets them and `stage.<key>=` still wins; the stage keys are what fingerprints
    record (config/stage_schemas.py DistillStageConfig)."""

    epochs: int = 6  # the window curriculum is per epoch (d3LLM LLaDA: 6)
    batch_size: int = 32  # the global batch, whatever the device count (d3LLM: 4 x 4 accumulation x 4 GPUs = 64)
    lr: float = 1e-3  # AdamW peak: LoRA on a 0.8 M model (d3LLM: 2e-5 on 8 B)
    warmup_steps: int = 20
    warmup_fraction: float = 0.0  # > 0: warm up over this fraction of all steps instead (d3LLM Dream: 0.05)
    min_lr_ratio: float = 1.0  # 1.0 = constant after warm-up (d3LLM LLaDA); < 1 = cosine decay to lr x this
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass
class DistillConfig:
    """The `distill` section: the recipe. Defaults are the embedded recipe (conf/distill/tiny.yaml: d3LLM's, scaled
    to the 0.8 M tiny teacher); conf/distill/{llada,dream,dparallel}.yaml hold what their recipes change."""

    name: str = "d3llm"
    masking: str = "trajectory"  # trajectory (d3LLM) | random (the naive-random-mask baseline, dParallel)
    targets: str = "teacher"  # teacher (self-distillation on its own outputs) | reference (the task's answers)
    only_correct: bool = True  # keep only trajectories whose answer the teacher got right
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: DistillLossSection = field(default_factory=DistillLossSection)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)

    def __post_init__(self) -> None:
        check(self.masking in ("trajectory", "random"),
               f"distill.masking must be trajectory or random, got {self.masking!r}")
        check(self.targets in ("teacher", "reference"),
               f"distill.targets must be teacher or reference, got {self.targets!r}")


@dataclass
class SuiteConfig:
    """The `suite` section: what stage=pipeline and stage=ablation run their steps on. The embedded default runs
    everything on `task`; a real-model experiment (conf/experiment/d3llm_llada.yaml) labels and distils on a prompt
    set and sweeps the paper's benchmarks, each scored against the paper's y_max."""

    train_task: str | None = None  # the conf/task preset of the trajectory and distill steps; null: `task`
    eval_tasks: list[str] = field(default_factory=list)  # conf/task presets the sweeps decode; empty: [`task`]
    # entropy τ of every threshold / d3llm sweep (curves compare only over the same list: AUP grows with points)
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.3, 0.5, 0.6, 1.0, 1.5, 2.2])
    # the decoders (conf/decode presets) the teacher and the student are swept with; teacher / d3llm is the control
    # that separates distillation from the decoder
    teacher_decoders: list[str] = field(default_factory=lambda: list(RULES))
    student_decoders: list[str] = field(default_factory=lambda: ["threshold", "d3llm"])
    # AUP's y_max per task name (the leaderboard's: the best accuracy of any method, method.md §8); a task without
    # one is scored against the best accuracy among the report's own runs
    y_max: dict[str, float] = field(default_factory=dict)
    # label the prompt set in N shards: N trajectory jobs in one batch (one GPU each under a launcher), then merged
    trajectory_shards: int = 1

    def __post_init__(self) -> None:
        check(self.trajectory_shards >= 1, f"suite.trajectory_shards must be >= 1, got {self.trajectory_shards}")
        check(len(self.thresholds) >= 1 and all(t > 0 for t in self.thresholds),
              f"suite.thresholds must be positive entropy thresholds, got {self.thresholds}")
        bad = {task: v for task, v in self.y_max.items() if not 0 < v <= 100}
        check(not bad, f"suite.y_max values must be accuracies in (0, 100], got {bad}")
        check(len(set(self.eval_tasks)) == len(self.eval_tasks), f"suite.eval_tasks lists a task twice: "
              f"{self.eval_tasks}")
        for key in ("teacher_decoders", "student_decoders"):
            bad = sorted(set(getattr(self, key)) - set(RULES))
            check(not bad, f"suite.{key} may hold {', '.join(RULES)} (the decode presets); got {bad}")


T = TypeVar("T")


@functools.cache
def _structured(schema: type) -> DictConfig:
    """A schema as an OmegaConf config, built once (its interpolation defaults are parsed on building)."""
    return OmegaConf.structured(schema)


def load_section(section: DictConfig | dict[str, Any], schema: type[T], key: str) -> T:
    """Validate one config section against its dataclass schema; raise ConfigError naming `key.<field>`."""
    try:
        data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve (full_key is absolute here)
        message = re.sub(r"^\w+ raised while resolving interpolation: ", "", str(err).splitlines()[0])
        raise ConfigError(f"{getattr(err, 'full_key', None) or key}: {message}") from None
    known = {f.name for f in fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{key}.{u}' for u in unknown)}; "
                          f"valid keys: {', '.join(sorted(known))}")
    try:
        merged = OmegaConf.merge(_structured(schema), data)  # (merge copies: the cached schema is never changed)
        return OmegaConf.to_object(merged)  # runs __post_init__
    except OmegaConfBaseException as err:
        full_key = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{full_key}: {err.msg if hasattr(err, 'msg') else err}".splitlines()[0]) from None


def load_task(section: DictConfig | dict[str, Any]):
    """The `task` section as its kind's class (tasks/base.py: schema and task in one), validated."""
    from d3llm_pipeline.tasks.base import task_class

    kind = section.get("kind", "arith") if section is not None else "arith"
    return load_section(section, task_class(str(kind)), "task")
