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


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_counts(section: object, prefix: str, *keys: str) -> None:
    """Each named field must be an integer >= 1 (sizes, steps, intervals)."""
    for key in keys:
        value = getattr(section, key)
        _check(value >= 1, f"{prefix}.{key} must be >= 1, got {value}")


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
    accept_global_best: bool = False  # rule=d3llm: LLaDA variant, always accept the global min-entropy token
    kv_cache: bool = False  # rule=d3llm: prefix KV cache with delayed caching and refresh (method.md §5.3)
    cache_delay_iter: int = 2  # a completed block joins the cache this many iterations after completing
    refresh_interval: int | None = None  # every this many iterations a full forward refreshes the cache; null = never

    def __post_init__(self) -> None:
        _check(self.rule in ("vanilla", "threshold", "d3llm"),
               f"decode.rule must be vanilla, threshold or d3llm, got {self.rule!r}")
        _check(self.score in ("entropy", "confidence"), f"decode.score must be entropy or confidence, got {self.score!r}")
        _check(self.gen_length > 0, f"decode.gen_length must be > 0, got {self.gen_length}")
        _check(self.block_size > 0, f"decode.block_size must be > 0, got {self.block_size}")
        _check(
            self.gen_length % self.block_size == 0,
            f"decode.block_size ({self.block_size}) must divide decode.gen_length ({self.gen_length}); "
            f"try decode.block_size={math.gcd(self.gen_length, self.block_size) or 1}",
        )
        _check(
            1 <= self.tokens_per_step <= self.block_size,
            f"decode.tokens_per_step must be in [1, decode.block_size={self.block_size}], got {self.tokens_per_step}",
        )
        _check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")
        if self.rule == "d3llm":
            _check(self.score == "entropy", "decode.score must be entropy for decode.rule=d3llm")
            for key in ("block_add_threshold", "decoded_token_threshold"):
                value = getattr(self, key)
                _check(0 < value <= 1, f"decode.{key} must be in (0, 1], got {value}")
        _check(not self.kv_cache or self.rule == "d3llm",
               f"decode.kv_cache=true needs decode.rule=d3llm (decode=d3llm), got rule={self.rule!r}")
        _check(self.cache_delay_iter >= 0, f"decode.cache_delay_iter must be >= 0, got {self.cache_delay_iter}")
        _check(self.refresh_interval is None or self.refresh_interval >= 1,
               f"decode.refresh_interval must be >= 1 or null (never), got {self.refresh_interval}")
        if self.rule in ("threshold", "d3llm"):
            if self.score == "entropy":
                _check(
                    self.threshold > 0,
                    f"decode.threshold must be > 0 for score=entropy (an entropy bound in nats), got {self.threshold}",
                )
            else:
                _check(
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

    def __post_init__(self) -> None:
        _check(1 <= self.min_steps <= self.max_steps, "task.min_steps must be >= 1 and <= task.max_steps, "
               f"got {self.min_steps}..{self.max_steps}")
        from d3llm_pipeline.tasks.arith import max_prompt_tokens, max_response_tokens

        need = max_response_tokens(self.max_steps) + 1  # the longest response plus at least one EOS
        _check(self.gen_length >= need, f"task.gen_length must be >= {need} for task.max_steps={self.max_steps}, "
               f"got {self.gen_length}")
        need = max_prompt_tokens(self.max_steps)
        _check(self.prompt_length >= need, f"task.prompt_length must be >= {need} for "
               f"task.max_steps={self.max_steps}, got {self.prompt_length}")
        _check_counts(self, "task", "n_train", "n_val", "n_test")


@dataclass
class TinyArchConfig:
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    init_std: float = 0.1
    embed_init_std: float | None = None  # token + position embeddings; None = init_std

    def __post_init__(self) -> None:
        _check(self.n_embd % self.n_head == 0, f"model.arch.n_head ({self.n_head}) must divide model.arch.n_embd "
               f"({self.n_embd})")
        _check(0.0 <= self.dropout < 1.0, f"model.arch.dropout must be in [0, 1), got {self.dropout}")
        _check(self.init_std > 0, f"model.arch.init_std must be > 0, got {self.init_std}")


@dataclass
class ModelConfig:
    name: str = "tiny-teacher"
    family: str = "tiny"  # tiny (embedded GPT-2-style bidirectional teacher); llada / dream come later
    path: str = "outputs/artifacts/teacher"
    dtype: str = "float32"
    arch: TinyArchConfig = field(default_factory=TinyArchConfig)

    def __post_init__(self) -> None:
        _check(self.family in ("tiny",), f"model.family must be one of: tiny, got {self.family!r}")
        _check(self.dtype in ("float32", "float64", "bfloat16"),
               f"model.dtype must be float32, float64 or bfloat16, got {self.dtype!r}")


@dataclass
class TeacherStageConfig:
    name: str = "teacher"
    max_steps: int = 4800
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 500
    val_problems: int = 200
    checkpoint_every: int = 250
    resume: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, f"stage.max_steps must be >= 1, got {self.max_steps}")
        _check(self.batch_size >= 1, f"stage.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"stage.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr_ratio <= 1, f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 <= self.warmup_steps < self.max_steps,
               f"stage.warmup_steps must be in [0, stage.max_steps={self.max_steps}), got {self.warmup_steps}")
        _check_counts(self, "stage", "val_every", "checkpoint_every")


@dataclass
class EvalStageConfig:
    name: str = "eval"
    split: str = "test"
    limit: int | None = None  # evaluate only the first N problems (quick runs)

    def __post_init__(self) -> None:
        _check(self.split in ("test", "validation", "train"),
               f"stage.split must be test, validation or train, got {self.split!r}")
        _check(self.limit is None or self.limit >= 1, f"stage.limit must be >= 1 or null, got {self.limit}")


@dataclass
class TrajectoryStageConfig:
    name: str = "trajectory"
    split: str = "train"
    n_prompts: int = 4000  # the first N prompts of the split
    chunk_size: int = 256  # rows per atomically written chunk (the most a crash can cost)
    num_shards: int = 1
    shard: int = 0
    temperatures: list[float] = field(default_factory=lambda: [0.0])  # one attempt per entry (retries)
    out_dir: str = "outputs/artifacts/trajectories/tiny-teacher"
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check(self.split in ("train", "validation", "test"),
               f"stage.split must be train, validation or test, got {self.split!r}")
        _check(self.n_prompts >= 1, f"stage.n_prompts must be >= 1, got {self.n_prompts}")
        _check(self.chunk_size >= 1, f"stage.chunk_size must be >= 1, got {self.chunk_size}")
        _check(self.num_shards >= 1, f"stage.num_shards must be >= 1, got {self.num_shards}")
        _check(0 <= self.shard < self.num_shards,
               f"stage.shard must be in [0, stage.num_shards={self.num_shards}), got {self.shard}")
        _check(len(self.temperatures) >= 1 and all(t >= 0 for t in self.temperatures),
               f"stage.temperatures must be a non-empty list of values >= 0, got {self.temperatures}")


@dataclass
class TrajectoryMergeStageConfig:
    name: str = "trajectory_merge"
    out_dir: str = "outputs/artifacts/trajectories/tiny-teacher"


@dataclass
class TrajectoryImportStageConfig:
    name: str = "trajectory_import"
    source: str = ""  # a local dataset dir (save_to_disk / parquet) or a Hub id in d3LLM's format
    split: str = "train"
    mask_token_id: int = 126336  # LLaDA-8B's MASK; Dream's is 151666
    limit: int | None = None
    out_dir: str = "outputs/artifacts/trajectories/imported"

    def __post_init__(self) -> None:
        _check(bool(self.source), "stage.source must name a d3LLM trajectory dataset (a local dir or a Hub id "
               "such as d3LLM/trajectory_data_llada_32)")
        _check(self.limit is None or self.limit >= 1, f"stage.limit must be >= 1 or null, got {self.limit}")


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"distill.lora.r must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"distill.lora.alpha must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, f"distill.lora.dropout must be in [0, 1), got {self.dropout}")
        _check(len(self.target_modules) >= 1, "distill.lora.target_modules must name at least one module")


@dataclass
class DistillLossSection:
    complementary: bool = True
    entropy_weight: float = 2.0
    entropy_temperature: float = 0.5
    entropy_on_complementary: bool = False
    scale: float = 0.25

    def __post_init__(self) -> None:
        _check(self.entropy_weight >= 0, f"distill.loss.entropy_weight must be >= 0, got {self.entropy_weight}")
        _check(self.entropy_temperature > 0,
               f"distill.loss.entropy_temperature must be > 0, got {self.entropy_temperature}")
        _check(self.scale > 0, f"distill.loss.scale must be > 0, got {self.scale}")


@dataclass
class CurriculumConfig:
    mask_ratio: str = "linear"  # linear: lower bound rises r_min -> r_max over training | off: fixed range
    r_min: float = 0.0
    r_max: float = 0.8
    window: str = "epochs"  # epochs: per-epoch list, interpolated within each epoch | off: fixed_window
    window_sizes: list[int] = field(default_factory=lambda: [8, 16])
    fixed_window: int = 16

    def __post_init__(self) -> None:
        _check(self.mask_ratio in ("linear", "off"),
               f"distill.curriculum.mask_ratio must be linear or off, got {self.mask_ratio!r}")
        _check(self.window in ("epochs", "off"), f"distill.curriculum.window must be epochs or off, got {self.window!r}")
        _check(0 <= self.r_min <= self.r_max <= 1,
               f"distill.curriculum needs 0 <= r_min <= r_max <= 1, got r_min={self.r_min} r_max={self.r_max}")
        _check(len(self.window_sizes) >= 1 and min(self.window_sizes) >= 1,
               f"distill.curriculum.window_sizes must be positive sizes, got {self.window_sizes}")
        _check(self.fixed_window >= 1, f"distill.curriculum.fixed_window must be >= 1, got {self.fixed_window}")


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
        _check(self.masking in ("trajectory", "random"),
               f"distill.masking must be trajectory or random, got {self.masking!r}")
        _check(self.targets in ("teacher", "reference"),
               f"distill.targets must be teacher or reference, got {self.targets!r}")


@dataclass
class DistillStageConfig:
    name: str = "distill"
    trajectories: str = "outputs/artifacts/trajectories/tiny-teacher"
    teacher_path: str = "outputs/artifacts/teacher"
    out_dir: str = "outputs/artifacts/student"
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 1.0  # 1.0 = constant after warm-up (d3LLM LLaDA); < 1 = cosine decay
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 200
    val_problems: int = 200
    checkpoint_every: int = 100
    resume: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_counts(self, "stage", "epochs", "batch_size", "val_every", "checkpoint_every")
        _check(self.lr > 0, f"stage.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_lr_ratio <= 1, f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class ReportStageConfig:
    name: str = "report"
    runs: list[str] = field(default_factory=list)
    y_max: float | None = None

    def __post_init__(self) -> None:
        _check(len(self.runs) >= 1, "stage.runs must list eval run or sweep dirs, e.g. "
               "'stage.runs=[outputs/multirun/eval/<date>_<time>]'")
        _check(self.y_max is None or 0 < self.y_max <= 100, f"stage.y_max must be in (0, 100], got {self.y_max}")


def _check_steps(step_overrides: dict[str, list[str]], thresholds: list[float]) -> None:
    """The shared keys of stage=pipeline and stage=ablation: per-step overrides and the τ sweep."""
    bad_steps = sorted(set(step_overrides) - {"teacher", "trajectory", "distill", "eval"})
    _check(not bad_steps, f"stage.step_overrides keys must be teacher, trajectory, distill or eval; got {bad_steps}")
    _check(len(thresholds) >= 1 and all(t > 0 for t in thresholds),
           f"stage.thresholds must be positive entropy thresholds, got {thresholds}")


@dataclass
class PipelineStageConfig:
    name: str = "pipeline"
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.3, 0.5, 0.6, 1.0, 1.5, 2.2])
    teacher_decoders: list[str] = field(default_factory=lambda: ["vanilla", "threshold"])
    student_decoders: list[str] = field(default_factory=lambda: ["threshold", "d3llm"])
    # Extra overrides for one step only, e.g. teacher: ["stage.max_steps=100"] (stage.* keys differ per step).
    step_overrides: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_steps(self.step_overrides, self.thresholds)
        for key in ("teacher_decoders", "student_decoders"):
            bad = sorted(set(getattr(self, key)) - {"vanilla", "threshold", "d3llm"})
            _check(not bad, f"stage.{key} may hold vanilla, threshold, d3llm; got {bad}")


# stage=ablation's variants: name -> (kind, what changed vs the `full` row). Each is conf/experiment/
# ablation_<name>.yaml; "distill" variants train their own student (paths.student_dir), "decode" variants reuse
# the default student and change only how it decodes.
ABLATION_VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("decode", "reference: d3LLM student, multi-block decoding, early stop"),
    "random_masking": ("distill", "random masks instead of the teacher's unmask order"),
    "no_mask_ratio_curriculum": ("distill", "mask ratio r ~ U(0, 0.8) all run long (no progressive noise)"),
    "no_window_curriculum": ("distill", "fixed 16-token window (no window curriculum)"),
    "dparallel": ("distill", "dParallel recipe: random masks at r = 0.5, no curricula, no /4"),
    "single_block": ("decode", "single-block threshold decoding (decode=threshold)"),
    "kv_cache": ("decode", "prefix KV cache, delayed caching (decode.kv_cache=true)"),
    "no_early_stop": ("decode", "no EOS early stop (decode.early_stop=false)"),
}


@dataclass
class AblationStageConfig:
    name: str = "ablation"
    variants: list[str] = field(default_factory=lambda: list(ABLATION_VARIANTS))
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0, 2.2])  # one τ sweep per variant
    reference_threshold: float = 0.5  # the τ whose accuracy / TPF / tokens/s go in the table
    step_overrides: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in ABLATION_VARIANTS]
        _check(len(self.variants) >= 1 and not unknown, f"stage.variants must list some of "
               f"{', '.join(ABLATION_VARIANTS)}; got {self.variants} (unknown: {unknown})")
        _check(len(set(self.variants)) == len(self.variants), f"stage.variants lists a variant twice: {self.variants}")
        _check_steps(self.step_overrides, self.thresholds)
        _check(any(math.isclose(t, self.reference_threshold) for t in self.thresholds),
               f"stage.reference_threshold={self.reference_threshold} must be one of stage.thresholds "
               f"{self.thresholds}; pick one of them or add it to the list")


# stage name -> schema of its `stage` section (the dispatcher's registry lives in d3llm_pipeline.stages)
STAGE_SCHEMAS: dict[str, type] = {
    "teacher": TeacherStageConfig,
    "eval": EvalStageConfig,
    "trajectory": TrajectoryStageConfig,
    "trajectory_merge": TrajectoryMergeStageConfig,
    "trajectory_import": TrajectoryImportStageConfig,
    "distill": DistillStageConfig,
    "report": ReportStageConfig,
    "pipeline": PipelineStageConfig,
    "ablation": AblationStageConfig,
}

T = TypeVar("T")


def load_section(section: DictConfig | dict[str, Any], schema: type[T], key: str) -> T:
    """Validate one config section against its dataclass schema; raise ConfigError naming `key.<field>`."""
    if isinstance(section, DictConfig):
        data = OmegaConf.to_container(section, resolve=True)
    else:
        data = dict(section)
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
