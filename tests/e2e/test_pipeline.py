"""stage=pipeline end to end on a seconds-sized setup: every step runs, is reused on rerun, and reports AUP."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CONF
from hydra import compose, initialize_config_dir

from d3llm_pipeline.stages import call_stage

STEP_OVERRIDES = {
    "teacher": ["stage.max_steps=4", "stage.warmup_steps=1", "stage.batch_size=8", "stage.val_every=2",
                "stage.val_problems=4"],
    "trajectory": ["stage.n_prompts=32", "stage.chunk_size=16"],
    "distill": ["stage.epochs=1", "stage.batch_size=8", "distill.only_correct=false", "stage.val_problems=4"],
    "eval": ["stage.limit=8"],
}


def steps_override(steps: dict[str, list[str]]) -> str:
    """`stage.step_overrides={...}` as one override (Hydra's grammar needs values holding '=' quoted)."""
    return "stage.step_overrides={" + ", ".join(
        f"{step}: [{', '.join(repr(o) for o in items)}]" for step, items in steps.items()) + "}"


STEPS = steps_override(STEP_OVERRIDES)


def run_pipeline(root: Path, run: str) -> dict:
    # What the command line would hold (the pipeline hands these to every step).
    overrides = ["experiment=smoke", "threads=1", "task.n_train=100", f"paths.root_dir={root}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=pipeline", "stage.thresholds=[0.5,2.0]", STEPS, f"+output_dir={root / run}",
            f"+pipeline_overrides={overrides}", *overrides])
        return call_stage(cfg)


def test_pipeline_runs_every_step_then_reuses_artifacts(tmp_path):
    first = run_pipeline(tmp_path, "run1")
    assert set(first["aup"]) == {"tiny-teacher/vanilla", "tiny-teacher/threshold", "tiny-teacher/d3llm",
                                 "tiny-student/threshold", "tiny-student/d3llm"}  # teacher/d3llm: the control
    report = json.loads((tmp_path / "run1" / "aup.json").read_text())
    assert sum(len(c["points"]) for c in report["curves"]) == 1 + 2 + 2 + 2 + 2
    assert (tmp_path / "run1" / "aup_curve.png").is_file() and (tmp_path / "run1" / "leaderboard.md").is_file()
    weights = tmp_path / "outputs" / "artifacts_smoke" / "student" / "merged" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    run_pipeline(tmp_path, "run2")
    assert weights.stat().st_mtime_ns == stamp  # the finished student was reused, not retrained
    trajectory = json.loads((tmp_path / "run2" / "trajectory" / "metrics.json").read_text())
    assert trajectory["labelled_now"] == 0 and trajectory["resumed_chunks"] == 2


def test_pipeline_on_the_long_task(tmp_path):
    """experiment=demo_long (task=arith_long) runs every step, in its own artifacts dir (smoke sizes)."""
    overrides = ["experiment=[smoke,demo_long]", "threads=1", "task.n_train=100", "model.arch.n_embd=32",
                 "model.arch.n_layer=1", "model.arch.n_head=2", "task.n_val=16", "task.n_test=16",
                 f"paths.root_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=pipeline", "stage.thresholds=[2.0]", "stage.teacher_decoders=[threshold]", STEPS,
            f"+output_dir={tmp_path / 'run'}", f"+pipeline_overrides={overrides}", *overrides])
        result = call_stage(cfg)
    assert set(result["aup"]) == {"tiny-teacher/threshold", "tiny-student/threshold", "tiny-student/d3llm"}
    artifacts = tmp_path / "outputs" / "artifacts_long"
    assert (artifacts / "student" / "merged" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "run" / "sweeps" / "student_d3llm" / "0" / "metrics.json").read_text())
    assert metrics["decoder"]["gen_length"] == 128 and metrics["task"]["name"] == "arith_long"


def test_with_wandb_the_steps_and_the_report_share_the_run_s_group(tmp_path):
    from d3llm_pipeline.stages.steps import report_logging, step_overrides

    overrides = ["experiment=smoke", "logger=wandb", f"paths.root_dir={tmp_path}"]
    run = tmp_path / "2026-12-07_10-00-00"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=pipeline", f"+output_dir={run}", f"+pipeline_overrides={overrides}", *overrides])
        step = compose(config_name="config", overrides=step_overrides(cfg, run / "sweeps", "student_d3llm/0",
                                                                      "stage=eval"))
        group = f"{cfg.experiment_name}/2026-12-07_10-00-00"
        assert step.logger.group == group and step.logger.run_name == f"{cfg.experiment_name}/sweeps/student_d3llm/0"
        report = report_logging(cfg).logger
        assert report.group == group and report.run_name == f"{cfg.experiment_name}/report"
        # the command line's own group wins, for every step
        mine = [*overrides, "logger.group=mine"]
        cfg = compose(config_name="config", overrides=[
            "stage=pipeline", f"+output_dir={run}", f"+pipeline_overrides={mine}", *mine])
        step = compose(config_name="config", overrides=step_overrides(cfg, run, "distill", "stage=distill"))
        assert step.logger.group == "mine" == report_logging(cfg).logger.group
