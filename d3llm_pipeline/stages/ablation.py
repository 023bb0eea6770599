"""stage=ablation (`make ablation`): the paper's ablations, run and tabulated by one command.

    python -m d3llm_pipeline stage=ablation                       # every variant; reuses every finished artifact
    python -m d3llm_pipeline stage=ablation 'stage.variants=[full,single_block]' 'stage.thresholds=[0.5,2.2]'
    python -m d3llm_pipeline stage=ablation 'stage.seeds=[0,1,2,3,4]'     # more training seeds, tighter intervals
    python -m d3llm_pipeline stage=ablation experiment=d3llm_llada 'stage.seeds=[0]'   # on LLaDA, the paper's recipe

On a real family (an experiment such as d3llm_llada) the trajectory and distill steps run on suite.train_task (the
prompt set), every variant is swept on stage.eval_task (default: the suite's first benchmark) and scored against
suite.y_max for it; a distillation variant changes the family's recipe only where the paper's ablation does
(ablation_dparallel: dParallel's method with its rank for the family, one decode block).

A variant is an experiment file, conf/experiment/ablation_<name>.yaml (config/schema.py ABLATION_VARIANTS lists
them). Every step is composed like its own command line (stages/steps.py: your other overrides, then the step's,
then stage.step_overrides.<step>):
1. stage=teacher (the tiny family only: a real family's checkpoint at model.path is used as it is), stage=trajectory
   and, when a variant decodes the default student, stage=distill: the shared
   artifacts (finished ones are reused, so after `make demo` these return in seconds);
2. per training seed s of stage.seeds (the teacher and trajectories are shared; seed s != the run's `seed` gets
   its own students, in `<student dir>_seed<s>`) and per variant: `stage=distill experiment=ablation_<name> seed=s`
   if it is a distillation variant (its own student under paths.student_dir, reused when finished), then one
   `stage=eval model=student experiment=ablation_<name> decode.threshold=<τ>` per τ of stage.thresholds, into
   <run dir>/variants/<name>/seed_<s>/<i> (with stage.reuse_evals, an eval already there with the same request
   is reused, so re-tabulating costs nothing);
3. with stage.control (default), the control: the teacher decoded as `full` is (`stage=eval experiment=ablation_full
   decode.threshold=<τ>` on the teacher, one sweep: no training seed) into <run dir>/control/<i>;
4. the table: ablation.md + ablation.csv (accuracy / TPF / tokens/s at stage.reference_threshold, AUP over the
   sweep with one y_max for all variants; with several seeds means ± 95% CI, and ΔTPF / Δtokens/s / ΔAUP vs `full`
   paired by seed with the sign called only when the interval excludes 0; the paper's figure per component; the
   `control` row and each row's AUP ÷ control) and the curves (aup_points.csv, aup.json, aup_curve.png; one curve
   per variant and seed, and the control's), also logged to wandb with logger=wandb.
An experiment on the command line stays underneath each variant's: experiment=smoke runs `experiment=[smoke,
ablation_<name>]`, so the variant's deltas apply on top of the smoke setup.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from d3llm_pipeline.config.schema import SuiteConfig, load_section
from d3llm_pipeline.config.stage_schemas import ABLATION_VARIANTS, AblationStageConfig
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.fileio import atomic_write_json, atomic_write_text
from d3llm_pipeline.models.families import EMBEDDED_FAMILY
from d3llm_pipeline.reporting.ablation_table import (
    CONTROL,
    ablation_rows,
    as_lists,
    markdown_table,
    seed_mean_report,
    variant_label,
    write_csv,
)
from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, plot_curves, write_report
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
    user_overrides,
)

log = logging.getLogger(__name__)


def split_experiments(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides without the experiment choice, the experiments it chose, in order)."""
    rest, chosen = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "experiment":
            rest.append(override)
            continue
        names = [name.strip() for name in value.strip().strip("[]").split(",")]
        chosen += [name for name in names if name and name != "null"]
    return rest, chosen


def variant_overrides(overrides: list[str], variant: str) -> list[str]:
    """The user's overrides with ablation_<variant> selected on top of any experiment they chose."""
    rest, chosen = split_experiments(overrides)
    if any(o.lstrip("+~").split("=", 1)[0] == "decode" for o in rest):
        raise ConfigError("stage=ablation chooses the decoder per variant (conf/experiment/ablation_*.yaml); drop "
                          "decode=... from the command line (decode.<key>=... still reaches every step)")
    return [*rest, f"experiment=[{','.join([*chosen, f'ablation_{variant}'])}]"]


def seed_student_dir(cfg: DictConfig, base: list[str], seed: int) -> list[str]:
    """The overrides that give training seed `seed` its own student: `seed=<s>`, and for any seed but the run's
    own (cfg.seed, whose students are the usual ones, e.g. make demo's) `paths.student_dir=<that dir>_seed<s>`."""
    if seed == int(cfg.seed):
        return []
    student_dir = compose(config_name="config", overrides=base).paths.student_dir
    return [f"seed={seed}", f"paths.student_dir={student_dir}_seed{seed}"]


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, AblationStageConfig, "stage")
    suite = load_section(cfg.suite, SuiteConfig, "suite")
    out_dir = Path(output_dir_of(cfg))
    tiny = cfg.model.family == EMBEDDED_FAMILY
    user = user_overrides(cfg)
    bases = {variant: variant_overrides(user, variant) for variant in stage.variants}  # fail fast, before training
    # what the steps run on: training on suite.train_task (a prompt set on a real family), every eval on one task
    train = [f"task={suite.train_task}"] if suite.train_task else []
    eval_task = stage.eval_task or (suite.eval_tasks[0] if suite.eval_tasks else None)
    on_task = [f"task={eval_task}"] if eval_task else []
    # the training steps: (dir, name, overrides, base); one teacher and one trajectory set (seeds are training
    # seeds), then per seed the default student (make demo's; decode variants read it) and each distill variant's
    trajectories = trajectory_jobs(cfg, out_dir, train)  # one job, or suite.trajectory_shards shards + a merge
    training = [trajectories[0]]
    evals = []
    student = student_overrides(cfg)  # the variant's own student (its paths.student_dir), in the family's format
    for seed in stage.seeds:
        where = f"seed_{seed}"
        if any(ABLATION_VARIANTS[v][0] == "decode" for v in stage.variants):
            training.append((out_dir / "distill" / where, "default", ["stage=distill", *train,
                                                                     *seed_student_dir(cfg, user, seed)], None))
        for variant in stage.variants:
            # a decode variant reads the default student's dir; a distill variant's experiment names its own
            distilled = ABLATION_VARIANTS[variant][0] == "distill"
            seeded = seed_student_dir(cfg, bases[variant] if distilled else user, seed)
            if distilled:
                training.append((out_dir / "distill" / where, variant, ["stage=distill", *train, *seeded],
                                 bases[variant]))
            evals += [(out_dir / "variants" / variant / where, str(i), ["stage=eval", *on_task, *student,
                       f"decode.threshold={tau}", *seeded], bases[variant]) for i, tau in enumerate(stage.thresholds)]
    if stage.control:  # the teacher as configured (the tiny family names its preset), decoded as `full` is
        teacher_model = ["model=tiny"] if tiny else []
        evals += [(out_dir / CONTROL, str(i), ["stage=eval", *on_task, *teacher_model, f"decode.threshold={tau}"],
                   variant_overrides(user, "full")) for i, tau in enumerate(stage.thresholds)]
    teacher = [(out_dir, "teacher", ["stage=teacher"], None)] if tiny else []  # (a real family's: used as it is)
    for directory, name, overrides, base in teacher + training + evals[:1] + evals[-1:] * stage.control:
        check_step(cfg, directory, name, *overrides, base=base)  # every dir they write: new or ours, up front
    progress = StepProgress("ablation", ["teacher", *trajectory_kinds(trajectories),
                                         *["distill"] * (len(training) - 1), *["eval"] * len(evals)])
    teacher_step(cfg, out_dir, progress)
    # the trajectories, then every student (one batch: in parallel under a launcher), then every eval (one batch)
    run_trajectories(cfg, trajectories, progress, out_dir)
    run_steps(cfg, training[1:], "distill", progress, out_dir)
    run_steps(cfg, evals, "eval", progress, out_dir, reuse_eval=stage.reuse_evals)
    return tabulate(cfg, stage, out_dir, suite.y_max or None)


def tabulate(cfg: DictConfig, stage: AblationStageConfig, out_dir: Path,
             y_max: dict[str, float] | None = None) -> dict[str, Any]:
    """ablation.md / ablation.csv and the AUP curves from the eval jobs under <out_dir>/variants/<variant>/seed_<s>/
    (and <out_dir>/control/ with stage.control); `y_max` per task (suite.y_max: the paper's) where given, else the
    best accuracy of any curve."""
    runs, failed = [], []
    for variant in stage.variants:
        for seed in stage.seeds:
            found, missing = collect_runs([out_dir / "variants" / variant / f"seed_{seed}"])
            # Every variant decodes a model called tiny-student: label its curve with the variant (and seed) instead.
            label = variant_label(variant, seed, len(stage.seeds))
            runs += [{**run, "model": {**run["model"], "name": label}} for run in found]
            failed += missing
    if stage.control:
        found, missing = collect_runs([out_dir / CONTROL])
        runs += [{**run, "model": {**run["model"], "name": CONTROL}} for run in found]
        failed += missing
    report = build_report(runs, y_max=y_max)  # one scale for every variant's AUP
    written = write_report(out_dir, report, failed)
    if len(stage.seeds) > 1:  # one curve per variant (seed means, 95% bars) instead of variants x seeds
        means = seed_mean_report(report, list(stage.variants), list(stage.seeds))
        atomic_write_json(out_dir / "aup_means.json", means)
        plot_curves(means, out_dir / "aup_curve.png")
        written.append(out_dir / "aup_means.json")
    changes = {variant: ABLATION_VARIANTS[variant][1] for variant in stage.variants}
    rows = ablation_rows(report, runs, changes, stage.reference_threshold, seeds=list(stage.seeds))
    table = markdown_table(rows, stage.reference_threshold, report["y_max"])
    atomic_write_text(out_dir / "ablation.md", table + "\n")
    written += [out_dir / "ablation.md", write_csv(rows, out_dir / "ablation.csv")]
    log_report(report_logging(cfg), report, tables={"ablation": as_lists(rows)})
    print(table)
    print(f"ablation table: {out_dir / 'ablation.md'} (+ ablation.csv); curves: {out_dir / 'aup_curve.png'}")
    if failed:
        log.warning("ablation: %d eval jobs failed or are missing: %s", len(failed), ", ".join(failed))
    return {"stage": "ablation", "rows": rows, "y_max": report["y_max"], "failed_jobs": failed,
            "report": [str(p) for p in written]}
