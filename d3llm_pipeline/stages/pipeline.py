"""stage=pipeline (`make demo`): teacher -> trajectories -> distill -> threshold sweeps -> AUP report, end to end.

    python -m d3llm_pipeline stage=pipeline                # reuses every finished artifact when rerun

Each step is composed exactly as its own command line would be (`stage=<step>` plus your other overrides),
so `python -m d3llm_pipeline stage=pipeline task.n_test=200` passes `task.n_test=200` to every step. Sweeps
write into `<run dir>/sweeps/<model>_<decoder>/<job>`; the report (aup_points.csv, aup.json, aup_curve.png and
leaderboard.md) lands in the run dir; with `logger=wandb` it is also logged as wandb tables + a plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import load_section
from d3llm_pipeline.config.stage_schemas import PipelineStageConfig
from d3llm_pipeline.fileio import atomic_write_text
from d3llm_pipeline.models.families import EMBEDDED_FAMILY
from d3llm_pipeline.reporting.aggregate import build_report, collect_runs, leaderboard, write_report
from d3llm_pipeline.reporting.wandb_report import log_report
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.steps import check_step, run_step, teacher_step

log = logging.getLogger(__name__)


def sweep_model(cfg: DictConfig, model: str) -> list[str]:
    """Overrides that select the teacher (`model` "tiny") or the merged student ("student") for a sweep.

    Tiny: the model=tiny / model=student presets. A real family (an experiment's model section, applied after
    any preset, so a preset cannot switch it): the teacher as configured; the student is the merged model
    stage=distill wrote (`paths.student_dir/merged`, in the teacher's format), named `<teacher name>-student`.
    """
    if cfg.model.family == EMBEDDED_FAMILY:
        return [f"model={model}"]
    if model == "tiny":  # the teacher (sweep dirs keep their tiny_<decoder> names)
        return []
    return [f"model.path={Path(cfg.paths.student_dir) / 'merged'}", f"model.name={cfg.model.name}-student"]


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, PipelineStageConfig, "stage")
    out_dir = Path(output_dir_of(cfg))
    tiny = cfg.model.family == EMBEDDED_FAMILY
    for step in ("teacher", "trajectory", "distill")[0 if tiny else 1:]:  # every dir they write: new or ours
        check_step(cfg, out_dir, step, f"stage={step}")
    teacher_step(cfg, out_dir)
    run_step(cfg, out_dir, "trajectory", "stage=trajectory")
    run_step(cfg, out_dir, "distill", "stage=distill")
    for model, decoders in (("tiny", stage.teacher_decoders), ("student", stage.student_decoders)):
        for decoder in decoders:
            taus = [None] if decoder == "vanilla" else stage.thresholds  # vanilla has no threshold
            for i, tau in enumerate(taus):
                extra = [] if tau is None else [f"decode.threshold={tau}"]
                run_step(cfg, out_dir / "sweeps" / f"{model}_{decoder}", str(i), "stage=eval",
                         *sweep_model(cfg, model), f"decode={decoder}", *extra)
    runs, failed = collect_runs([out_dir / "sweeps"])
    report = build_report(runs)
    written = write_report(out_dir, report, failed)
    table = leaderboard(report)
    atomic_write_text(out_dir / "leaderboard.md", table + "\n")
    log_report(cfg, report)
    print(table)
    log.info("pipeline finished: plot %s, table %s", out_dir / "aup_curve.png", out_dir / "leaderboard.md")
    return {"stage": "pipeline", "report": [str(p) for p in written], "failed_jobs": failed,
            "aup": {f"{c['model']}/{c['decoder']}": c["aup"] for c in report["curves"]}}
