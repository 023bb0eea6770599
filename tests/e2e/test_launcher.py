"""stage=pipeline through a Hydra launcher, for real: `hydra/launcher=submitit_local` runs each step as a submitit
job (a subprocess, as a Slurm job would be), on the LLaDA fixture with the d3LLM recipe (paper_fixture.py). The
distillation job is killed (SIGKILL, as a lost node) once it has written a checkpoint; the pipeline stops with one
`error:` line, and rerunning the same command reuses the trajectories (two shards, labelled at once, then merged), resumes the distillation from that checkpoint
and finishes the sweeps and the report. ~60 s on 2 cores (each job starts its own interpreter).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from paper_fixture import paper_setup, quoted_list

EPOCHS, STEPS_PER_EPOCH = 40, 2  # 4 prompts, batch 2: 80 steps, a checkpoint every 5


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_distillation(submitit_dir: Path, ckpt: Path, pipeline: subprocess.Popen) -> None:
    """Wait for the distillation's first checkpoint, then SIGKILL its submitit task (the controller's child): frozen
    first with SIGSTOP until the checkpoint on disk is whole, so the kill never lands mid-write."""
    deadline = time.monotonic() + 300
    while not ckpt.is_file():
        assert pipeline.poll() is None, "the pipeline ended before the distillation wrote a checkpoint"
        assert time.monotonic() < deadline, "no distillation checkpoint within 300 s"
        time.sleep(0.02)
    controllers = [int(d.name) for d in submitit_dir.iterdir() if d.name.isdigit() and alive(int(d.name))]
    tasks = [task for controller in controllers for task in children_of(controller)]
    assert len(tasks) == 1, (controllers, tasks)  # the distillation job, the only one running
    for _ in range(100):
        os.kill(tasks[0], signal.SIGSTOP)
        try:
            torch.load(ckpt, weights_only=False)
            break
        except Exception:  # noqa: BLE001 - caught mid-write: let it finish the file
            os.kill(tasks[0], signal.SIGCONT)
            time.sleep(0.01)
    os.kill(tasks[0], signal.SIGKILL)


def test_a_pipeline_through_submitit_resumes_a_killed_distillation(tmp_path):
    _, overrides = paper_setup(tmp_path, "llada")
    overrides = [o.replace("suite.eval_tasks=[gsm8k_cot,long_gsm8k]", "suite.eval_tasks=[gsm8k_cot]")
                 for o in overrides if not o.startswith("stage.step_overrides.distill=")]
    prompts = tmp_path / "prompts.jsonl"
    overrides.append("stage.step_overrides.distill=" + quoted_list(
        f"task.data_files={prompts}", f"stage.epochs={EPOCHS}", "stage.batch_size=2", "stage.checkpoint_every=5",
        "distill.lora.r=4", "distill.lora.alpha=4", "distill.only_correct=false", "task.prompt_length=48",
        "task.gen_length=32"))
    overrides.append("suite.trajectory_shards=2")  # two trajectory jobs at once, merged before distillation
    run = tmp_path / "run"
    command = [sys.executable, "-m", "d3llm_pipeline", "stage=pipeline", *overrides, "hydra/launcher=submitit_local",
               f"hydra.run.dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    student = tmp_path / "outputs" / "artifacts" / "student"
    ckpt = student.with_name("student.lightning") / "last.ckpt"

    with open(tmp_path / "first.err", "w") as err:
        pipeline = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            kill_distillation(run / ".submitit", ckpt, pipeline)
            assert pipeline.wait(timeout=120) == 2
        finally:
            if pipeline.poll() is None:
                pipeline.kill()
    lines = (tmp_path / "first.err").read_text().strip().splitlines()
    assert lines[-1].startswith("error:") and "did not all finish" in lines[-1] and "rerun the same command" in lines[-1]
    shards = [json.loads((run / "trajectory" / f"shard_{i}" / "metrics.json").read_text()) for i in (0, 1)]
    assert [s["labelled_now"] for s in shards] == [2, 2]  # the 4 prompts in two halves, before the distillation
    merged = json.loads((run / "trajectory_merge" / "metrics.json").read_text())
    assert merged["rows"] == 4, merged
    assert not (student / "merged").exists()
    killed_at = torch.load(ckpt, weights_only=False)["global_step"]
    assert 5 <= killed_at < EPOCHS * STEPS_PER_EPOCH

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    distill = json.loads((run / "distill" / "metrics.json").read_text())
    assert distill["resumed"] is True and distill["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert (run / "distill" / ".hydra" / "overrides.yaml").is_file()  # run as a Hydra job in its step dir
    report = json.loads((run / "aup.json").read_text())
    assert {c["model"] for c in report["curves"]} == {"llada-8b-instruct", "llada-8b-instruct-student"}
    for i in (0, 1):  # the finished trajectories were not labelled again
        assert json.loads((run / "trajectory" / f"shard_{i}" / "metrics.json").read_text())["labelled_now"] == 0


@pytest.mark.slow
def test_the_one_node_recipe_runs_with_joblib_and_ddp(tmp_path):
    """README's one-node command on CPU: eval and trajectory jobs in joblib processes, the distillation in the
    pipeline's process on 2 gloo DDP ranks (joblib's loky workers cannot spawn them). ~40 s on 2 cores."""
    _, overrides = paper_setup(tmp_path, "llada")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "d3llm_pipeline", "stage=pipeline", *overrides, "hydra/launcher=local",
               "hydra.launcher.n_jobs=2", "device=${job_device:}", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.precision=32-true", f"hydra.run.dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    report = json.loads((run / "aup.json").read_text())
    assert {c["task"] for c in report["curves"]} == {"gsm8k_cot", "long_gsm8k"}
