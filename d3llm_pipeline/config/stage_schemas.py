"""Typed schemas of each stage's `stage` section and their registry: the one place each stage setting's default is
written (conf/stage/<name>.yaml selects the schema and holds only what differs; config/store.py registers them).

A default that follows another key is written as the interpolation it resolves through (`${model.path}`,
`${paths.artifacts_dir}/...`); `${per_job:<single>,<root>}` gives each job of a multirun its own dir
(config/__init__.py). Validated like every section, through `config.schema.load_section`:

    stage = load_section(cfg.stage, STAGE_SCHEMAS[cfg.stage.name], "stage")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from d3llm_pipeline.config.schema import check, check_counts, check_nonneg
from d3llm_pipeline.decoding.spec import RULES

# The decode presets a pipeline / ablation / distill sweep names by decoder (conf/decode/<rule>.yaml)
DECODERS = RULES


@dataclass
class TeacherStageConfig:
    name: str = "teacher"
    # where the checkpoint is written: model.path; under -m each job's own teachers/<job overrides>
    out_dir: str = "${per_job:${model.path},${paths.artifacts_dir}/teachers}"
    # optimiser steps (budget by steps): ~10 min on 2 idle cores; with lr 1e-3 the accuracy transition is over by
    # ~3,000 steps (seeds 0/1 x threads 1/2 gave 99.7-100.0% vanilla on the 1,000 test problems: docs/results.md)
    max_steps: int = 4800
    batch_size: int = 32
    # AdamW peak. Measured: 1e-3 crosses the transition far earlier than the prototype's 2e-3 (val 56% at step 1,500
    # vs 78% at 3,200) and 4e-3 is slower still (28% at 2,500)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_every: int = 500  # steps between validation (loss + accuracy with threshold decoding)
    val_problems: int = 200
    checkpoint_every: int = 250  # Lightning checkpoint cadence (resume point)
    resume: bool = True  # continue from the last Lightning checkpoint of an unfinished run
    overwrite: bool = False  # a finished teacher at model.path is reused; true retrains from scratch

    def __post_init__(self) -> None:
        check(self.max_steps >= 1, f"stage.max_steps must be >= 1, got {self.max_steps}")
        check(self.batch_size >= 1, f"stage.batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"stage.lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(0 <= self.warmup_steps < self.max_steps,
               f"stage.warmup_steps must be in [0, stage.max_steps={self.max_steps}), got {self.warmup_steps}")
        check_counts(self, "stage", "val_every", "checkpoint_every", "val_problems")
        check_nonneg(self, "stage", "weight_decay", "grad_clip")


@dataclass
class EvalStageConfig:
    name: str = "eval"
    split: str = "test"
    limit: int | None = None  # evaluate only the first N problems (quick checks)

    def __post_init__(self) -> None:
        check(self.split in ("test", "validation", "train"),
               f"stage.split must be test, validation or train, got {self.split!r}")
        check(self.limit is None or self.limit >= 1, f"stage.limit must be >= 1 or null, got {self.limit}")


@dataclass
class TrajectoryStageConfig:
    name: str = "trajectory"
    split: str = "train"
    n_prompts: int = 4000  # the first N prompts of the split (the distill stage's data)
    chunk_size: int = 256  # rows per atomically written chunk: the most a crash can cost
    num_shards: int = 1  # split the prompts into contiguous shards: -m stage.num_shards=2 stage.shard=0,1
    shard: int = 0
    # one attempt per entry; incorrect samples retry at the next (d3LLM LLaDA: 0.0..0.4)
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    out_dir: str = "${paths.artifacts_dir}/trajectories/${model.name}"
    overwrite: bool = False  # true deletes this shard's chunks first

    def __post_init__(self) -> None:
        check(self.split in ("train", "validation", "test"),
               f"stage.split must be train, validation or test, got {self.split!r}")
        check(self.n_prompts >= 1, f"stage.n_prompts must be >= 1, got {self.n_prompts}")
        check(self.chunk_size >= 1, f"stage.chunk_size must be >= 1, got {self.chunk_size}")
        check(self.num_shards >= 1, f"stage.num_shards must be >= 1, got {self.num_shards}")
        check(0 <= self.shard < self.num_shards,
               f"stage.shard must be in [0, stage.num_shards={self.num_shards}), got {self.shard}")
        check(len(self.temperatures) >= 1 and all(t >= 0 for t in self.temperatures),
               f"stage.temperatures must be a non-empty list of values >= 0, got {self.temperatures}")


@dataclass
class TrajectoryMergeStageConfig:
    name: str = "trajectory_merge"
    out_dir: str = "${paths.artifacts_dir}/trajectories/${model.name}"


@dataclass
class TrajectoryImportStageConfig:
    name: str = "trajectory_import"
    source: str = ""  # a local dataset dir (save_to_disk / parquet) or a Hub id in d3LLM's format
    split: str = "train"
    # the data's MASK id: the model family's (LLaDA-8B-Instruct 126336, Dream 151666; the tiny family has no
    # published trajectories, so it must be given)
    mask_token_id: int | None = "${by_family:{llada: 126336, dream: 151666, tiny: null}}"  # type: ignore[assignment]
    limit: int | None = None  # convert only the first N rows
    # where stage=distill (and stage=pipeline's distill step) of the same model reads trajectories
    out_dir: str = "${paths.artifacts_dir}/trajectories/${model.name}"

    def __post_init__(self) -> None:
        check(bool(self.source), "stage.source must name a d3LLM trajectory dataset (a local dir or a Hub id "
               "such as d3LLM/trajectory_data_llada_32)")
        check(self.limit is None or self.limit >= 1, f"stage.limit must be >= 1 or null, got {self.limit}")
        check(self.mask_token_id is None or self.mask_token_id >= 0,
              f"stage.mask_token_id must be >= 0, got {self.mask_token_id}")


@dataclass
class StudentCompareConfig:
    """How a `-m stage=distill` sweep ends: every student evaluated over a τ sweep and ranked by AUP."""

    enabled: bool = True
    decoders: list[str] = field(default_factory=lambda: ["d3llm"])  # one curve per student and decoder
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0, 2.2])  # entropy τ per curve
    teacher: bool = True  # add the teacher's curve(s) under the same decoders
    limit: int | None = None  # evaluate only the first N test problems (null = the whole split)

    def __post_init__(self) -> None:
        bad = sorted(set(self.decoders) - set(DECODERS))
        check(len(self.decoders) >= 1 and not bad,
               f"stage.compare.decoders may hold {', '.join(DECODERS)}; got {self.decoders}")
        check(len(self.thresholds) >= 1 and all(t > 0 for t in self.thresholds),
               f"stage.compare.thresholds must be positive entropy thresholds, got {self.thresholds}")
        check(self.limit is None or self.limit >= 1, f"stage.compare.limit must be >= 1 or null, got {self.limit}")


@dataclass
class DistillStageConfig:
    name: str = "distill"
    trajectories: str = "${paths.artifacts_dir}/trajectories/${model.name}"  # written by stage=trajectory
    teacher_path: str = "${model.path}"
    # adapter/ + merged/; under -m each job's own students/<job overrides>
    out_dir: str = "${per_job:${paths.student_dir},${paths.artifacts_dir}/students}"
    # the recipe's optimisation (config/schema.py DistillOptimConfig: distill=<recipe> sets it), overridable here
    epochs: int = "${distill.optim.epochs}"  # type: ignore[assignment]
    batch_size: int = "${distill.optim.batch_size}"  # type: ignore[assignment]  # the global batch
    lr: float = "${distill.optim.lr}"  # type: ignore[assignment]
    warmup_steps: int = "${distill.optim.warmup_steps}"  # type: ignore[assignment]
    warmup_fraction: float = "${distill.optim.warmup_fraction}"  # type: ignore[assignment]  # > 0: of all steps
    min_lr_ratio: float = "${distill.optim.min_lr_ratio}"  # type: ignore[assignment]  # 1.0 = constant after warm-up
    weight_decay: float = "${distill.optim.weight_decay}"  # type: ignore[assignment]
    grad_clip: float = "${distill.optim.grad_clip}"  # type: ignore[assignment]
    val_every: int = 200
    val_problems: int = 200
    checkpoint_every: int = 100
    resume: bool = True
    overwrite: bool = False
    # recompute activations in backward (8B students): on with a GPU trainer (trainer=gpu|ddp|fsdp), off on CPU;
    # stage.gradient_checkpointing=false turns it off on GPUs (faster when the batch fits without it)
    gradient_checkpointing: bool = "${on_gpu:${trainer.accelerator}}"  # type: ignore[assignment]
    # true: print the memory per device this run would need (no weights, data or GPU: stages/distill_dry_run.py)
    dry_run: bool = False
    # a multirun (-m stage=distill ...) ends by evaluating and ranking its students (students.md)
    compare: StudentCompareConfig = field(default_factory=StudentCompareConfig)

    def __post_init__(self) -> None:
        check_counts(self, "stage", "epochs", "batch_size", "val_every", "checkpoint_every", "val_problems")
        check_nonneg(self, "stage", "warmup_steps", "weight_decay", "grad_clip")
        check(self.lr > 0, f"stage.lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(0 <= self.warmup_fraction < 1, f"stage.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def warmup_for(self, max_steps: int) -> int:
        """The warm-up steps of a run of `max_steps`: warmup_fraction of them when it is set, else warmup_steps."""
        return round(self.warmup_fraction * max_steps) if self.warmup_fraction > 0 else self.warmup_steps


@dataclass
class ReportStageConfig:
    name: str = "report"
    runs: list[str] = field(default_factory=list)  # eval run dirs or sweep dirs (searched recursively for jobs)
    y_max: float | None = None  # best accuracy for AUP weighting; null = the best accuracy among these runs

    def __post_init__(self) -> None:
        check(len(self.runs) >= 1, "stage.runs must list eval run or sweep dirs, e.g. "
               "'stage.runs=[outputs/multirun/eval/<date>_<time>]'")
        check(self.y_max is None or 0 < self.y_max <= 100, f"stage.y_max must be in (0, 100], got {self.y_max}")


PIPELINE_STEPS = ("teacher", "trajectory", "distill", "eval")
TRAINING_STAGES = ("teacher", "distill", "pipeline", "ablation")  # the stages that read the trainer group
STEP_STAGES = ("pipeline", "ablation")  # stages that run other stages as steps (each step validated on its own)


def _no_step_overrides() -> dict[str, list[str]]:
    return {step: [] for step in PIPELINE_STEPS}


def check_step_names(step_overrides: Any, key: str) -> None:
    """`key` (stage.step_overrides or the top-level step_defaults) maps step names to lists of overrides."""
    check(isinstance(step_overrides, dict), f"{key} must map steps to override lists, e.g. "
           f"{key}.eval=['stage.limit=100']; got {step_overrides!r}")
    bad_steps = sorted(set(step_overrides) - set(PIPELINE_STEPS))
    check(not bad_steps, f"{key} keys must be {', '.join(PIPELINE_STEPS)}; got {bad_steps}")
    for step, extra in step_overrides.items():
        # key=value, or ~key (Hydra's delete, which has no "=")
        check(isinstance(extra, list) and all(isinstance(o, str) and ("=" in o or o.startswith("~")) for o in extra),
               f"{key}.{step} must be a list of key=value (or ~key) overrides, e.g. ['stage.limit=100']; "
               f"got {extra!r}")


def check_steps(step_overrides: dict[str, list[str]], thresholds: list[float]) -> None:
    """The shared keys of stage=pipeline and stage=ablation: per-step overrides and the τ sweep."""
    check_step_names(step_overrides, "stage.step_overrides")
    check(len(thresholds) >= 1 and all(t > 0 for t in thresholds),
           f"stage.thresholds must be positive entropy thresholds, got {thresholds}")


@dataclass
class PipelineStageConfig:
    name: str = "pipeline"
    # entropy τ for every threshold / d3llm sweep: the suite's grid (config/schema.py SuiteConfig)
    thresholds: list[float] = "${suite.thresholds}"  # type: ignore[assignment]
    # the decoders each model is swept with: the suite's (config/schema.py SuiteConfig)
    teacher_decoders: list[str] = "${suite.teacher_decoders}"  # type: ignore[assignment]
    student_decoders: list[str] = "${suite.student_decoders}"  # type: ignore[assignment]
    # extras for one step only, e.g. "stage.step_overrides.teacher=['stage.max_steps=100']" (stage.* keys differ)
    step_overrides: dict[str, list[str]] = field(default_factory=_no_step_overrides)

    def __post_init__(self) -> None:
        check_steps(self.step_overrides, self.thresholds)
        for key in ("teacher_decoders", "student_decoders"):
            bad = sorted(set(getattr(self, key)) - set(DECODERS))
            check(not bad, f"stage.{key} may hold {', '.join(DECODERS)}; got {bad}")


# stage=ablation's variants: name -> (kind, what changed vs the `full` row). Each is conf/experiment/
# ablation_<name>.yaml; "distill" variants train their own student (paths.student_dir), "decode" variants reuse
# the default student and change only how it decodes.
ABLATION_VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("decode", "reference: d3LLM student, multi-block decoding, early stop"),
    "random_masking": ("distill", "random masks instead of the teacher's unmask order"),
    "no_mask_ratio_curriculum": ("distill", "mask ratio r ~ U(0, 0.8) all run long (no progressive noise)"),
    "no_window_curriculum": ("distill", "one fixed window of a decode block (no window curriculum)"),
    "no_complementary_loss": ("distill", "no complementary-mask pass: (CE + 2 H) / 4"),
    "no_entropy_loss": ("distill", "no entropy term: (CE + CE') / 4"),
    "dparallel": ("distill", "dParallel recipe: random masks at r = 0.5, no curricula, no /4"),
    "single_block": ("decode", "single-block threshold decoding (decode=threshold)"),
    "kv_cache": ("decode", "prefix KV cache, delayed caching (decode.kv_cache=true)"),
    "no_early_stop": ("decode", "no EOS early stop (decode.early_stop=false)"),
}


@dataclass
class AblationStageConfig:
    name: str = "ablation"
    # full = the reference row (d3LLM student, decode=d3llm); one variant = conf/experiment/ablation_<variant>.yaml
    variants: list[str] = field(default_factory=lambda: list(ABLATION_VARIANTS))
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0, 2.2])  # one τ sweep per variant
    # the τ whose accuracy / TPF / tokens/s go in the table (d3LLM LLaDA GSM8K τ)
    reference_threshold: float = 0.5
    # training seeds per variant: the table gives means ± 95% CI and calls signs only when an interval excludes 0
    # (seed 0 = the run's own students, e.g. make demo's)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reuse_evals: bool = True  # evals already on disk with the same model + settings are reused (re-tabulating is free)
    # also sweep the teacher decoded as `full` (no distillation: stage=pipeline's teacher/d3llm curve), the control
    # every student's AUP is divided by (the table's `control` row and AUP ÷ control column)
    control: bool = True
    # the conf/task preset every variant is swept on; null: the suite's first eval task, else `task` (training runs
    # on suite.train_task, as in stage=pipeline)
    eval_task: str | None = None
    step_overrides: dict[str, list[str]] = field(default_factory=_no_step_overrides)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in ABLATION_VARIANTS]
        check(len(self.variants) >= 1 and not unknown, f"stage.variants must list some of "
               f"{', '.join(ABLATION_VARIANTS)}; got {self.variants} (unknown: {unknown})")
        check(len(set(self.variants)) == len(self.variants), f"stage.variants lists a variant twice: {self.variants}")
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and all(s >= 0 for s in self.seeds),
               f"stage.seeds must list distinct seeds >= 0, got {self.seeds}")
        check_steps(self.step_overrides, self.thresholds)
        check(any(math.isclose(t, self.reference_threshold) for t in self.thresholds),
               f"stage.reference_threshold={self.reference_threshold} must be one of stage.thresholds "
               f"{self.thresholds}; pick one of them or add it to the list")


@dataclass
class ExportStageConfig:
    """stage=export: a checkpoint (optionally + a LoRA adapter, merged) in its family's official format."""

    name: str = "export"
    model_path: str = "${model.path}"  # what to export (loaded natively with model.family, model.dtype)
    adapter: str | None = None  # a PEFT adapter dir (stage=distill's adapter/) merged onto model_path first
    source_path: str | None = None  # the official dir whose format / config.json / files are written; null: model_path
    out_dir: str = "${paths.artifacts_dir}/export/${model.name}"
    dtype: str | None = None  # null: config.json's torch_dtype (bf16 for released checkpoints)

    def __post_init__(self) -> None:
        check(self.dtype in (None, "float32", "bfloat16", "float16"),
               f"stage.dtype must be null, float32, bfloat16 or float16, got {self.dtype!r}")
        check(bool(self.model_path), "stage.model_path must name the checkpoint to export")


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
    "export": ExportStageConfig,
}

