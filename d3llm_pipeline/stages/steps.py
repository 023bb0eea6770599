"""Run one stage from inside another (stage=pipeline, stage=ablation), composed like its own command line.

    run_step(cfg, out_dir, "teacher", "stage=teacher")      # == python -m d3llm_pipeline stage=teacher <your overrides>

A step gets the outer command line's overrides (minus those that choose or configure the outer stage), then
its own (`stage=<step>`, ...), then an experiment's `step_defaults.<step>`, then `stage.step_overrides.<step>`,
and writes into `<out_dir>/<name>`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import types
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, open_dict

from d3llm_pipeline import artifacts
from d3llm_pipeline.config.validate import validate_config
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.models.families import EMBEDDED_FAMILY
from d3llm_pipeline.stages import call_stage, finish_wandb, output_dir_of

log = logging.getLogger(__name__)


def user_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides minus those that choose or configure the outer stage itself.

    Tests (no Hydra app running) pass them as `+pipeline_overrides=[...]`.
    """
    listed = cfg.get("pipeline_overrides")
    if listed is None:
        from hydra.core.hydra_config import HydraConfig

        listed = HydraConfig.get().overrides.task
    return [o for o in listed if not o.lstrip("+~").startswith(("stage=", "stage.", "hydra", "output_dir"))]


def step_extras(cfg: DictConfig, step: str) -> list[str]:
    """The extra overrides of one step: an experiment's (top-level step_defaults), then the command line's
    (stage.step_overrides), so the command line wins."""
    return [*(cfg.get("step_defaults") or {}).get(step, []), *cfg.stage.get("step_overrides", {}).get(step, [])]


def _user_set(cfg: DictConfig, key: str) -> bool:
    return any(o.lstrip("+~").startswith(f"{key}=") for o in user_overrides(cfg))


def wandb_group(cfg: DictConfig) -> str:
    """The wandb group of a pipeline / ablation run and all its steps: logger.group if the command line sets it,
    else '<experiment>/<the run's dir name>', so one dashboard group holds one run's trajectories, students, sweeps
    and report."""
    if _user_set(cfg, "logger.group"):
        return str(cfg.logger.group)
    return f"{cfg.experiment_name}/{Path(output_dir_of(cfg)).name}"


def step_logging(cfg: DictConfig, out_dir: Path, name: str) -> list[str]:
    """With logger=wandb: a step's group (wandb_group) and run name ('<experiment>/<step dir under the run>', e.g.
    'd3llm_llada/sweeps/gsm8k_cot/student_d3llm/0')."""
    if cfg.logger.get("name") != "wandb":
        return []
    label = Path(os.path.relpath(out_dir / name, output_dir_of(cfg))).as_posix()
    named = [] if _user_set(cfg, "logger.run_name") else [f"logger.run_name='{cfg.experiment_name}/{label}'"]
    return [f"logger.group='{wandb_group(cfg)}'", *named]


def report_logging(cfg: DictConfig) -> DictConfig:
    """The config a pipeline / ablation logs its report with: in the run's wandb group, named '<experiment>/report'."""
    if cfg.logger.get("name") != "wandb":
        return cfg
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.logger.group = wandb_group(cfg)
        out.logger.run_name = cfg.logger.get("run_name") or f"{cfg.experiment_name}/report"
    return out


def step_overrides(cfg: DictConfig, out_dir: Path, name: str, *overrides: str,
                   base: list[str] | None = None) -> list[str]:
    """A step's whole command line: `overrides` (the first is "stage=<step>") on top of `base` (default:
    user_overrides), then the step's extras and wandb names (step_logging), writing into `<out_dir>/<name>`."""
    step = overrides[0].split("=", 1)[1]
    base = user_overrides(cfg) if base is None else base
    return [*base, *overrides, *step_extras(cfg, step), *step_logging(cfg, out_dir, name),
            f"+output_dir={out_dir / name}"]


def compose_step(cfg: DictConfig, out_dir: Path, name: str, *overrides: str,
                 base: list[str] | None = None) -> DictConfig:
    """The config of one step (run_step's: step_overrides), validated."""
    sub = compose(config_name="config", overrides=step_overrides(cfg, out_dir, name, *overrides, base=base))
    try:  # a step's own overrides (stage.step_overrides) get the whole-config rules too, before it starts
        validate_config(sub)
    except ConfigError as err:
        raise ConfigError(f"stage={cfg.stage.name}, step {name} ({' '.join(overrides)}): {err}") from None
    return sub


def check_step(cfg: DictConfig, out_dir: Path, name: str, *overrides: str, base: list[str] | None = None) -> None:
    """Before a pipeline / ablation runs anything: the step's config is valid and every dir it will write is new or
    ours (checks.check_outputs), so a foreign dir met by a late step stops the run before hours of earlier steps."""
    from d3llm_pipeline.stages.checks import check_outputs

    check_outputs(compose_step(cfg, out_dir, name, *overrides, base=base))


def reused_eval(cfg: DictConfig, sub: DictConfig, step_dir: Path) -> dict[str, Any] | None:
    """The metrics of an eval step already in `step_dir` with the same request (model weights, seed, decode / task /
    stage settings: artifacts.eval_request) as `sub`, else None."""
    if sub.stage.name != "eval" or not (step_dir / "metrics.json").is_file():
        return None
    done = json.loads((step_dir / "metrics.json").read_text())
    if done.get("request") != artifacts.eval_request(sub):
        return None
    log.info("%s: reusing the eval in %s (same model and settings)", cfg.stage.name, step_dir)
    return {**done, artifacts.REUSED: True}


def was_reused(result: dict[str, Any] | None) -> bool:
    """Whether a step's result says it did no work: a reused teacher / student / eval, or trajectories that
    were all labelled before (StepProgress leaves such steps out of its means)."""
    if not isinstance(result, dict):
        return False
    return bool(result.get(artifacts.REUSED)) or result.get("labelled_now") == 0


def run_step(cfg: DictConfig, out_dir: Path, name: str, *overrides: str,
             base: list[str] | None = None, reuse_eval: bool = False) -> dict[str, Any]:
    """Compose (compose_step) and run one step in this process.

    reuse_eval: a stage=eval step whose dir already holds a metrics.json of the same request returns it instead of
    decoding again (reused_eval).
    """
    sub = compose_step(cfg, out_dir, name, *overrides, base=base)
    chosen = [o for o in (user_overrides(cfg) if base is None else base) if o.lstrip("+~").startswith("experiment=")]
    log.info("%s: %s -> %s", cfg.stage.name, " ".join([*overrides, *chosen]), out_dir / name)
    done = reused_eval(cfg, sub, out_dir / name) if reuse_eval else None
    if done is not None:
        return done
    try:
        return call_stage(sub)
    finally:
        finish_wandb()  # a step's wandb run must not swallow the next step's (or the final report's) logs


Step = tuple[Path, str, list[str], "list[str] | None"]  # (dir, name, overrides, base) as run_step takes them


def run_steps(cfg: DictConfig, steps: list[Step], kind: str, progress: StepProgress, root: Path,
              reuse_eval: bool = False) -> None:
    """Run a batch of steps that may run at once: in this process one by one, or, when the run was started with a
    Hydra launcher (hydra/launcher=slurm | submitit_local | local), as one multirun of it (stages/launch.py), with
    its submission files under `root`."""
    from d3llm_pipeline.stages.launch import distill_resources, external_launcher, launch_steps, launched

    target = external_launcher()
    if not launched(kind, target):
        for directory, name, overrides, base in steps:
            with progress.step(str((directory / name).relative_to(root)) if kind == "eval" else name, kind) as timed:
                timed.reused = was_reused(run_step(cfg, directory, name, *overrides, base=base, reuse_eval=reuse_eval))
        return
    launcher_extra, step_extra = distill_resources(cfg, target) if kind == "distill" else ([], [])
    jobs = []
    for directory, name, overrides, base in steps:
        if reuse_eval and reused_eval(cfg, compose_step(cfg, directory, name, *overrides, base=base),
                                      directory / name) is not None:
            continue
        jobs.append((directory / name, [*step_overrides(cfg, directory, name, *overrides, base=base), *step_extra]))
    with progress.step(f"{len(steps)} {kind} step(s) ({len(jobs)} launched)", kind, count=len(steps)):
        if jobs:
            launch_steps(jobs, root, launcher_extra)


def trajectory_jobs(cfg: DictConfig, out_dir: Path, train: list[str]) -> list[Step]:
    """The trajectory step of stage=pipeline / stage=ablation: one job into <run>/trajectory, or
    suite.trajectory_shards contiguous shards of the prompt set (stage.num_shards / stage.shard) into
    <run>/trajectory/shard_<i>, run as one batch (in parallel under a launcher, one GPU each)."""
    shards = int(cfg.suite.trajectory_shards)
    if shards == 1:
        return [(out_dir, "trajectory", ["stage=trajectory", *train], None)]
    return [(out_dir / "trajectory", f"shard_{i}", ["stage=trajectory", *train, f"stage.num_shards={shards}",
                                                   f"stage.shard={i}"], None) for i in range(shards)]


def trajectory_kinds(jobs: list[Step]) -> list[str]:
    """The progress kinds of the trajectory jobs (run_trajectories): one per shard, then their merge."""
    return ["trajectory"] * len(jobs) + ["trajectory_merge"] * (len(jobs) > 1)


def run_trajectories(cfg: DictConfig, jobs: list[Step], progress: StepProgress, root: Path) -> None:
    """The trajectory jobs (trajectory_jobs) as one batch; shards are then merged in this process
    (stage=trajectory_merge on the shards' own stage.out_dir), as distillation reads the merged set."""
    run_steps(cfg, jobs, "trajectory", progress, root)
    if len(jobs) > 1:
        directory, name, overrides, base = jobs[0]
        shard = compose_step(cfg, directory, name, *overrides, base=base)
        task = [o for o in overrides if o.startswith("task=")]
        with progress.step("trajectory_merge", "trajectory_merge"):
            run_step(cfg, root, "trajectory_merge", "stage=trajectory_merge", *task,
                     f"stage.out_dir={shard.stage.out_dir}", base=base)


def student_overrides(cfg: DictConfig) -> list[str]:
    """The overrides that make a step decode the merged student of the run's family instead of the teacher.

    Tiny: the model=student preset. A real family (an experiment's model section, applied after any preset, so a
    preset cannot switch it): the teacher's settings with the merged model stage=distill wrote, in the teacher's
    format, at `${paths.student_dir}/merged` (resolved in the step, so an ablation variant's own student dir
    counts), named `<teacher name>-student`.
    """
    if cfg.model.family == EMBEDDED_FAMILY:
        return ["model=student"]
    return ["model.path=${paths.student_dir}/merged", f"model.name={cfg.model.name}-student"]


def teacher_step(cfg: DictConfig, out_dir: Path, progress: StepProgress) -> None:
    """The teacher step of stage=pipeline / stage=ablation: stage=teacher trains the tiny family; a real family's
    teacher is the checkpoint at model.path, used as it is (checked here, never trained over)."""
    if cfg.model.family == EMBEDDED_FAMILY:
        run_steps(cfg, [(out_dir, "teacher", ["stage=teacher"], None)], "teacher", progress, out_dir)
        return
    from d3llm_pipeline.config.schema import ModelConfig, load_section, load_task
    from d3llm_pipeline.stages.common import check_model

    with progress.step("teacher", "teacher"):
        check_model(load_section(cfg.model, ModelConfig, "model"), load_task(cfg.task))
        log.info("%s: model.family=%s, so the teacher step uses the checkpoint at %s as it is (stage=teacher "
                 "trains only the tiny family)", cfg.stage.name, cfg.model.family, cfg.model.path)


class StepProgress:
    """The overall progress of stage=pipeline / stage=ablation: each step logs its number, its time, the elapsed
    time and an estimate of what is left: the mean time of the steps of each kind so far, times those to come. A
    kind not timed yet is named with its count instead of guessed (an eval is not a teacher's 5 minutes).

        progress = StepProgress("pipeline", ["teacher", "trajectory", "distill"] + ["eval"] * 38)
        with progress.step("sweeps/student_d3llm/3"):
            run_step(...)
    """

    def __init__(self, stage: str, kinds: list[str]) -> None:
        """kinds: the kind of every step to come, in order (the total, and a better estimate than one mean)."""
        self.stage, self.total, self.done = stage, len(kinds), 0
        self.start = time.perf_counter()
        self.kinds: dict[str, list[float]] = {}  # step kind -> durations so far
        self.remaining = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}  # in order of first use

    def left(self) -> str:
        """What is left: "about 12m30s", plus "and 38 eval step(s) not timed yet" for kinds with no time so far."""
        mean = {k: sum(v) / len(v) for k, v in self.kinds.items()}
        known = sum(mean[k] * n for k, n in self.remaining.items() if n > 0 and k in mean)
        unknown = [f"{n} {k}" for k, n in self.remaining.items() if n > 0 and k not in mean]
        untimed = f"{', '.join(unknown)} step(s) not timed yet" if unknown else ""
        if known == 0 and untimed:
            return untimed
        return f"about {_clock(known)}" + (f" and {untimed}" if untimed else "")

    @contextlib.contextmanager
    def step(self, name: str, kind: str | None = None, count: int = 1):
        """Time one step, or `count` steps of one kind run as a batch (each counted at the batch's time / count).
        The caller may set `.reused = True` on what it yields: the step is counted done but its seconds (a reused
        artifact's) stay out of the kind's mean, which would otherwise promise 11 students in 8 seconds."""
        kind = kind or name.split("/")[0]
        tic = time.perf_counter()
        timed = types.SimpleNamespace(reused=False)
        yield timed
        took = time.perf_counter() - tic
        self.done += count
        if not timed.reused:
            self.kinds.setdefault(kind, []).extend([took / max(count, 1)] * count)
        if kind in self.remaining:
            self.remaining[kind] -= count
        log.info("%s: step %d/%d (%s) took %s; elapsed %s; left: %s", self.stage, self.done, self.total, name,
                 _clock(took), _clock(time.perf_counter() - self.start), self.left())


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
