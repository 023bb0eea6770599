"""Whole-config validation: every user-facing key (type, range, cross-key rules), before a stage does any work.

    validate_config(cfg)        # raises ConfigError("decode.gen_length (32) must equal task.gen_length (64); ...")

Each group is loaded with its schema (config/schema.py, `load_section`: types + ranges of one section); this module
adds the top-level run keys (seed, device, threads, debug), the trainer / logger / paths groups and the rules that
span sections. The entry point's pre-flight (config/preflight.py) runs it on the composed config of every job of a
command line before Hydra starts anything, and `run_stage` runs it again inside each job (for command lines the
pre-flight leaves to Hydra, such as --config-dir). Every error is one ConfigError naming the key and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from d3llm_pipeline.config.schema import (
    DecodeConfig,
    DistillConfig,
    ModelConfig,
    SuiteConfig,
    load_section,
    load_task,
)
from d3llm_pipeline.config.stage_schemas import STAGE_SCHEMAS, STEP_STAGES, TRAINING_STAGES, check_step_names
from d3llm_pipeline.errors import ConfigError, check
from d3llm_pipeline.models.families import EMBEDDED_FAMILY

# trainer.* keys the training stages pass to lightning.Trainer themselves (a trainer.* value would clash with
# them or silently fight them), each with the key to use instead. training/fit.py rejects them too.
TRAINER_RESERVED = {
    "max_steps": "stage.max_steps (stage=teacher) or stage.epochs (stage=distill)",
    "max_epochs": "stage.epochs (stage=distill)",
    "val_check_interval": "stage.val_every",
    "check_val_every_n_epoch": "stage.val_every",
    "gradient_clip_val": "stage.grad_clip",
    "logger": "logger=csv|wandb|none",
    "callbacks": "the stage's own callbacks (nothing to set)",
    "default_root_dir": "hydra.run.dir",
    "num_sanity_val_steps": "nothing (validation runs every stage.val_every steps)",
    "limit_val_batches": "stage.val_problems",
}
_BOOL_TRAINER_KEYS = ("enable_progress_bar", "enable_checkpointing", "enable_model_summary", "deterministic",
                      "benchmark", "sync_batchnorm", "use_distributed_sampler")
_COUNT_TRAINER_KEYS = ("num_nodes", "log_every_n_steps", "accumulate_grad_batches")
FSDP_WRAPS = ("layer", "none")  # trainer.fsdp_wrap (ours, not Lightning's: training/strategies.py)
FSDP_WRAP_KEY = "fsdp_wrap"
_LOGGERS = ("csv", "wandb", "none")
_WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb.init accepts
_SEED_MAX = 2**32 - 1  # numpy / Lightning accept seeds in [0, 2**32 - 1]
# Config groups that every composed config holds, with their schema (None: checked below; the task's schema is
# its kind's class: config/schema.py load_task)
SECTIONS: dict[str, type | None] = {"model": ModelConfig, "task": None, "decode": DecodeConfig,
                                    "distill": DistillConfig, "suite": SuiteConfig, "stage": None, "trainer": None,
                                    "logger": None, "paths": None}
# Top-level keys that are set by code, not by users: steps of stage=pipeline (output_dir), tests.
_INTERNAL_KEYS = ("hydra", "output_dir", "pipeline_overrides")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RunConfig:
    """The checks of the top-level keys (no group of their own). Their defaults are written in conf/config.yaml
    alone; the composed config always holds every key (a removed one is reported before this runs)."""

    seed: Any = None
    device: Any = None
    threads: Any = None
    experiment_name: Any = None
    debug: Any = None
    step_defaults: Any = None

    def __post_init__(self) -> None:
        check(_is_int(self.seed) and 0 <= self.seed <= _SEED_MAX,
               f"seed must be an integer in [0, {_SEED_MAX}], got {self.seed!r}; e.g. seed=0")
        check(isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
               f"device must be auto, cpu, cuda or cuda:N (N = a GPU index), got {self.device!r}")
        check(self.threads == "auto" or (_is_int(self.threads) and self.threads >= 1),
               f"threads must be 'auto' or an integer >= 1, got {self.threads!r}; e.g. threads=2")
        check(self.experiment_name is None or (isinstance(self.experiment_name, str) and bool(self.experiment_name)),
               f"experiment_name must be a non-empty string, got {self.experiment_name!r}")
        check(self.debug is None or isinstance(self.debug, bool), f"debug must be true or false, got {self.debug!r}")
        check_step_names(self.step_defaults or {}, "step_defaults")


def _plain(cfg: DictConfig, key: str) -> Any:
    """cfg[key] resolved to plain Python, or a ConfigError naming the key whose interpolation fails."""
    try:
        node = cfg[key]
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as err:  # e.g. ${oc.env:NAME} of an unset variable (full_key is absolute)
        raise ConfigError(f"{getattr(err, 'full_key', None) or key}: {str(err).splitlines()[0]}") from None


def _check_top_level(cfg: DictConfig) -> None:
    run_keys = [f.name for f in fields(RunConfig)]
    known = set(run_keys) | set(SECTIONS) | set(_INTERNAL_KEYS)
    unknown = sorted(set(cfg.keys()) - known)
    valid = ", ".join(sorted(known - set(_INTERNAL_KEYS)))
    check(not unknown, f"unknown top-level key(s) {', '.join(unknown)}; valid: {valid} (a group's keys go under "
           "it, e.g. decode.threshold=0.5)")
    for key in ("seed", "device", "threads"):
        check(key in cfg, f"{key} is missing from the config (removed with ~{key}?); set {key}=<value>")
    for key in SECTIONS:
        check(key in cfg and cfg[key] is not None,
               f"the {key} group is missing (removed with ~{key}?); choose one, e.g. {key}=<option> (conf/{key}/)")
    load_section({k: _plain(cfg, k) for k in run_keys if k in cfg}, RunConfig, "run")


def fsdp_wrap_of(trainer: Any) -> str:
    """trainer.fsdp_wrap as configured (a dict or DictConfig); none, Lightning's own policy, when absent."""
    return str(trainer.get(FSDP_WRAP_KEY, "none"))


def _check_fsdp(trainer: dict[str, Any], stage_name: str) -> None:
    strategy = trainer.get("strategy")
    check(fsdp_wrap_of(trainer) in FSDP_WRAPS, f"trainer.fsdp_wrap must be one of "
           f"{', '.join(FSDP_WRAPS)} (one FSDP unit per decoder layer, or the whole model), got "
           f"{trainer.get('fsdp_wrap')!r}")
    if not (isinstance(strategy, str) and strategy.startswith("fsdp")):
        return
    check(trainer.get("accelerator", "auto") != "cpu" or strategy == "fsdp",
           f"trainer.strategy={strategy} keeps the shards in host RAM between GPU steps; on CPU processes "
           "(trainer.accelerator=cpu) use trainer.strategy=fsdp")
    check(trainer.get("accelerator", "auto") != "cpu" or str(trainer.get("precision", "32-true")) in ("32-true", "32"),
           f"trainer.strategy={strategy} on CPU processes (trainer.accelerator=cpu) runs in trainer.precision=32-true, "
           f"not {trainer.get('precision')} (Lightning's FSDP mixed precision autocasts on CUDA only); add "
           "trainer.precision=32-true")
    devices = trainer.get("devices", "auto")
    one = devices == 1 or (isinstance(devices, list) and len(devices) == 1)
    check(not (one and trainer.get("num_nodes", 1) == 1),
           f"trainer.strategy={strategy} with trainer.devices={devices}: one process has nothing to shard (and torch's "
           "FSDP then runs unsharded, which breaks on tied embeddings); use trainer=gpu for one device (it resumes "
           "an FSDP run's checkpoint), or trainer.devices=2 or more")
    check(stage_name != "teacher", f"trainer.strategy={strategy} is for stage=distill (a sharded 8B teacher); "
           "stage=teacher trains the embedded tiny teacher: use trainer=gpu or trainer=ddp")


def _lightning_values() -> tuple[set[str], set[str]]:
    """(trainer.precision values, trainer.accelerator values) as the installed Lightning accepts them (read from
    Lightning, not copied: the training stages that read the trainer group import it anyway)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry

    def literals(tp: Any) -> set[str]:
        args = typing.get_args(tp)
        return {str(a) for arg in args for a in (literals(arg) if typing.get_args(arg) else [arg])}

    return literals(_PRECISION_INPUT), set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}


def _check_trainer(trainer: dict[str, Any]) -> None:
    for key, instead in TRAINER_RESERVED.items():
        check(key not in trainer, f"trainer.{key} is set by the training stages themselves; use {instead} "
               f"instead and drop trainer.{key}")
    precisions, accelerators = _lightning_values()
    accelerator = trainer.get("accelerator", "auto")
    check(accelerator in accelerators,
           f"trainer.accelerator must be one of {', '.join(sorted(accelerators))}, got {accelerator!r}")
    devices = trainer.get("devices", "auto")
    ok = (devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1))
          or (isinstance(devices, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", devices) is not None)
          or (isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices)))
    check(ok, f"trainer.devices must be a count >= 1, -1 (all), 'auto' or a list of device indices, got {devices!r}")
    if "precision" in trainer:
        precision = str(trainer["precision"])
        check(precision in precisions,
               f"trainer.precision must be one of {', '.join(sorted(precisions))}, got {trainer['precision']!r}")
    for key in _COUNT_TRAINER_KEYS:
        if key in trainer:
            check(_is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key} must be an integer >= 1, got "
                   f"{trainer[key]!r}")
    for key in _BOOL_TRAINER_KEYS:
        if key in trainer:
            check(isinstance(trainer[key], bool), f"trainer.{key} must be true or false, got {trainer[key]!r}")
    known = {"accelerator", "devices", "precision", "strategy", "fsdp_wrap", *_COUNT_TRAINER_KEYS,
             *_BOOL_TRAINER_KEYS}
    extra = sorted(set(trainer) - known)
    if extra:  # only then pay for importing Lightning: is it a real Trainer argument?
        import inspect

        import lightning

        valid = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
        bad = [key for key in extra if key not in valid]
        check(not bad, f"trainer.{bad[0] if bad else ''} is not a lightning.Trainer argument; check the spelling "
               "(any Trainer argument can be added with +trainer.<arg>=<value>)")


def _check_logger(logger: dict[str, Any]) -> None:
    check(logger.get("name") in _LOGGERS, f"logger.name must be one of {', '.join(_LOGGERS)}, got "
           f"{logger.get('name')!r}; choose logger=csv|wandb|none")
    if logger["name"] == "wandb":
        check(logger.get("mode", "offline") in _WANDB_MODES, f"logger.mode must be one of {', '.join(_WANDB_MODES)}, "
               f"got {logger.get('mode')!r} (WANDB_MODE=online sends runs to wandb)")
        check(isinstance(logger.get("project", ""), str) and bool(logger.get("project", "x")),
               f"logger.project must be a non-empty string, got {logger.get('project')!r}")
        check(isinstance(logger.get("tags", []), list), f"logger.tags must be a list, got {logger.get('tags')!r}")


def _check_paths(paths: dict[str, Any]) -> None:
    for key, value in paths.items():
        check(isinstance(value, str) and bool(value), f"paths.{key} must be a directory path, got {value!r}")


def _check_cross(task: Any, decode: DecodeConfig, distill: DistillConfig) -> None:
    """Rules that span sections."""
    check(decode.gen_length == task.gen_length,
           f"decode.gen_length ({decode.gen_length}) must equal task.gen_length ({task.gen_length}): the task's "
           "generation region is what the model was trained on; drop the decode.gen_length override (it follows "
           "task.gen_length)")
    curriculum = distill.curriculum
    too_big = [w for w in curriculum.window_sizes if w > task.gen_length]
    check(not too_big, f"distill.curriculum.window_sizes {curriculum.window_sizes} must be <= task.gen_length "
           f"({task.gen_length}); {too_big} do not fit the generation region")
    check(curriculum.fixed_window <= task.gen_length, f"distill.curriculum.fixed_window ({curriculum.fixed_window}) "
           f"must be <= task.gen_length ({task.gen_length})")


def validate_config(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError naming the first bad key of a composed config (and its fix)."""
    _check_top_level(cfg)
    loaded = {"task": load_task(cfg.task)}  # first: the decode section's gen_length follows the task's
    loaded.update({key: load_section(cfg[key], schema, key) for key, schema in SECTIONS.items() if schema is not None})
    stage_name = _plain(cfg.stage, "name") if "name" in cfg.stage else None
    check(stage_name in STAGE_SCHEMAS,
           f"unknown stage {stage_name!r}; choose stage= one of: {', '.join(sorted(STAGE_SCHEMAS))}")
    task = loaded["task"]
    if task.STAGES is not None and stage_name not in STEP_STAGES:  # a task only some stages run on (tasks/base.py)
        runs = " or ".join(f"stage={name}" for name in sorted(task.STAGES))
        check(stage_name in task.STAGES, f"task={task.name} (task.kind={task.kind}) is run by {runs}, not "
              f"stage={stage_name}; train, label and evaluate in-house on an embedded task (task=arith)")
    split = _plain(cfg.stage, "split") if "split" in cfg.stage else "test"
    check(stage_name != "eval" or task.GRADED_SPLITS or split == "test",
           f"stage.split={split} applies to the embedded task; task={task.name} is scored on the split lm-eval "
           "scores (its test split); to score other rows give them as that split: task.data_files=<file.jsonl>")
    load_section(cfg.stage, STAGE_SCHEMAS[stage_name], "stage")
    family = loaded["model"].family
    check(stage_name != "teacher" or family == EMBEDDED_FAMILY,
           f"stage=teacher trains the embedded tiny teacher from scratch; model.family={family} is a released "
           f"checkpoint, used as it is (model.path={loaded['model'].path}), so there is nothing to train: label its "
           "trajectories with stage=trajectory, distil with stage=distill, or run both with stage=pipeline")
    if stage_name in TRAINING_STAGES:  # (the trainer group is read by these alone)
        _check_trainer(_plain(cfg, "trainer"))
        _check_fsdp(_plain(cfg, "trainer"), stage_name)
    accumulate = _plain(cfg, "trainer").get("accumulate_grad_batches", 1)
    check(stage_name != "distill" or accumulate == 1,
           f"trainer.accumulate_grad_batches={accumulate} is not supported by stage=distill: each micro-batch would "
           "reuse its step's noise draws, the loss is normalised over one step's global batch, and the epochs would "
           "be stretched; lower the memory per device with a smaller stage.batch_size (the global batch), more "
           "devices, or a smaller distill.lora.r (check with stage.dry_run=true)")
    check(stage_name != "trajectory" or loaded["decode"].temperature == 0,
           f"decode.temperature={loaded['decode'].temperature}: stage=trajectory decodes at stage.temperatures "
           "(d3LLM's retries at rising temperature, e.g. stage.temperatures=[0.0,0.1]); drop decode.temperature")
    _check_logger(_plain(cfg, "logger"))
    _check_paths(_plain(cfg, "paths"))
    _check_cross(loaded["task"], loaded["decode"], loaded["distill"])
