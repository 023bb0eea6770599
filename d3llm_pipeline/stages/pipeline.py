"""stage=pipeline (`make demo`): teacher -> trajectories -> distill -> threshold sweeps -> AUP report, end to end.

    python -m d3llm_pipeline stage=pipeline                # reuses every finished artifact when rerun

Each step is composed exactly as its own command line would be (`stage=<step>` plus your other overrides),
so `python -m d3llm_pipeline stage=pipeline task.n_test=200` passes `task.n_test=200` to every step. The `suite`
section says what the steps run on: by default everything on `task`, the sweeps into
`<run dir>/sweeps/<model>_<decoder>/<job>`; a real-model experiment (experiment=d3llm_llada) labels and distils on
`suite.train_task` (a prompt set) and sweeps each of `suite.eval_tasks` (benchmarks) into
`<run dir>/sweeps/<task>/<model>_<decoder>/<job>`, each task's curves scored against `suite.y_max[task]`. The report
(aup_points.csv, aup.json, aup_curve.png and leaderboard.md) lands in the run dir; with `logger=wandb` it is also
logged as wandb tables + a plot. Every step logs its number, the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import SuiteConfig, load_section
from d3llm_pipeline.config.stage_schemas import PipelineStageConfig
from d3llm_pipeline.fileio import atomic_write_text
from d3llm_pipeline.models.families import EMBEDDED_FAMILY
from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report
from d3llm_pipeline.reporting.wandb_report import log_report
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.steps import (
    StepProgress,
    check_step,
    report_logging,
    run_steps,
    run_trajectories,
    student_overrides,
    teacher_step,
    trajectory_jobs,
    trajectory_kinds,
)

log = logging.getLogger(__name__)


def sweep_plan(cfg: DictConfig, stage: PipelineStageConfig, suite: SuiteConfig,
               out_dir: Path) -> list[tuple[Path, str, list[str]]]:
    """Every eval job of the sweeps: (dir, name, overrides), per eval task (suite.eval_tasks; none: the run's task,
    into sweeps/<model>_<decoder>/<i>), model (teacher, student), decoder and τ (vanilla has no threshold)."""
    jobs = []
    for task in suite.eval_tasks or [None]:
        where = out_dir / "sweeps" / task if task else out_dir / "sweeps"
        chosen = [f"task={task}"] if task else []
        for model, decoders in (("tiny", stage.teacher_decoders), ("student", stage.student_decoders)):
            # the teacher: the model as configured (sweep dirs keep their tiny_<decoder> names; the tiny family
            # names its preset); the student: the merged model stage=distill wrote
            chosen_model = student_overrides(cfg) if model == "student" else (
                ["model=tiny"] if cfg.model.family == EMBEDDED_FAMILY else [])
            for decoder in decoders:
                taus = [None] if decoder == "vanilla" else stage.thresholds
                jobs += [(where / f"{model}_{decoder}", str(i), ["stage=eval", *chosen, *chosen_model,
                          f"decode={decoder}", *([] if tau is None else [f"decode.threshold={tau}"])])
                         for i, tau in enumerate(taus)]
    return jobs


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, PipelineStageConfig, "stage")
    suite = load_section(cfg.suite, SuiteConfig, "suite")
    out_dir = Path(output_dir_of(cfg))
    tiny = cfg.model.family == EMBEDDED_FAMILY
    train = [f"task={suite.train_task}"] if suite.train_task else []  # the trajectory and distill steps' task
    sweeps = sweep_plan(cfg, stage, suite, out_dir)
    trajectories = trajectory_jobs(cfg, out_dir, train)  # one job, or suite.trajectory_shards shards + a merge
    distill = (out_dir, "distill", ["stage=distill", *train], None)
    # before any work: every dir the training steps write is new or ours, and one eval job per task composes
    teacher = [(out_dir, "teacher", ["stage=teacher"], None)] if tiny else []  # (a real family's: used as it is)
    first_per_task: dict[Path, tuple] = {}
    for job in sweeps:
        first_per_task.setdefault(job[0].parent, (*job, None))
    for directory, name, overrides, base in teacher + trajectories[:1] + [distill, *first_per_task.values()]:
        check_step(cfg, directory, name, *overrides, base=base)
    progress = StepProgress("pipeline", ["teacher", *trajectory_kinds(trajectories), "distill",
                                         *["eval"] * len(sweeps)])
    teacher_step(cfg, out_dir, progress)
    run_trajectories(cfg, trajectories, progress, out_dir)
    run_steps(cfg, [distill], "distill", progress, out_dir)
    run_steps(cfg, [(directory, name, overrides, None) for directory, name, overrides in sweeps], "eval", progress,
              out_dir)  # one batch: in parallel under a launcher
    runs, failed = collect_runs([out_dir / "sweeps"])
    report = build_report(runs, y_max=suite.y_max or None)  # the paper's y_max per task where the suite names it
    written = write_report(out_dir, report, failed)
    table = leaderboard(report)
    atomic_write_text(out_dir / "leaderboard.md", table + "\n")
    log_report(report_logging(cfg), report)
    print(table)
    log.info("pipeline finished: plot %s, table %s", out_dir / "aup_curve.png", out_dir / "leaderboard.md")
    return {"stage": "pipeline", "report": [str(p) for p in written], "failed_jobs": failed,
            "aup": {f"{c['model']}/{c['decoder']}": c["aup"] for c in report["curves"]}}
