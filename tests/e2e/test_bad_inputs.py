"""Bad input, tried as a new user would: every mistake ends in exit code 2 and one `error:` line naming the key or
the file, with no traceback and nothing written that a later correct run would trip over.

CASES is the one table: (id, command line, expected substring of the error line[, setup]). A command line may use
{art} (this module's artifacts dir: a random tiny teacher and its trajectories, also what paths.artifacts_dir
points at), {none} (a path that does not exist), {afile} (a regular file: nothing can be created under it, not
even by root) and {setup} (the dir that SETUPS[setup] built: a broken copy of an artifact). Every case runs the
CLI's own entry function in this process (conftest.cli_in_process: the pre-flight, Hydra, the stage), from a working
dir of its own; the tests after the table start the real CLI in a subprocess. Adding a case is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, cli_in_process
from hydra import compose, initialize_config_dir

TEACHER, TRAJ = "{art}/teacher", "{art}/trajectories/tiny-teacher"

CASES = [
    # top-level run keys
    ("seed_not_int", ["seed=foo"], "seed must be an integer"),
    ("seed_negative", ["seed=-1"], "seed must be an integer"),
    ("threads_zero", ["threads=0"], "threads must be 'auto' or an integer >= 1"),
    ("threads_word", ["threads=many"], "threads must be"),
    ("device_gpu", ["device=gpu"], "device must be auto, cpu, cuda or cuda:N"),
    ("debug_not_bool", ["debug=maybe"], "debug must be true or false"),
    ("top_key_removed", ["~seed"], "seed is missing"),
    ("group_removed", ["~decode"], "the decode group is missing"),
    # unknown keys and config group options
    ("unknown_top_key", ["foo=1"], "unknown key 'foo'"),
    ("unknown_top_key_added", ["+foo=1"], "unknown top-level key(s) foo"),
    ("unknown_decode_key", ["decode.bogus=1"], "unknown key 'decode.bogus'"),
    ("unknown_decode_key_added", ["+decode.treshold=0.3"], "decode.treshold"),
    ("unknown_stage_key", ["stage=trajectory_merge", "+stage.shards=2"], "stage.shards"),
    ("unknown_model", ["model=bogus"], "unknown model 'bogus'; choose model= one of: "),
    ("unknown_logger", ["logger=bogus"], "unknown logger 'bogus'"),
    ("unknown_experiment", ["experiment=bogus"], "unknown experiment 'bogus'"),
    ("unknown_stage", ["stage=bogus"], "unknown stage 'bogus'"),
    ("unknown_launcher", ["hydra/launcher=bogus"], "unknown hydra/launcher 'bogus'"),
    ("group_added_twice", ["+decode=vanilla"], "Multiple values for decode"),
    # override syntax, sweeps without -m
    ("unclosed_list", ["decode.threshold=[0.5"], "cannot parse the override 'decode.threshold=[0.5'"),
    ("no_equals", ["decode.threshold"], "cannot parse the override 'decode.threshold'"),
    ("no_key", ["=3"], "cannot parse the override '=3'"),
    ("sweep_without_m", ["stage=eval", "decode.threshold=0.5,1.0"], "decode.threshold=0.5,1.0 sweeps over several"),
    ("hydra_key_swept", ["-m", "hydra.run.dir=a,b"], "hydra.run.dir=a,b"),
    # types, ranges, cross-key rules
    ("threshold_not_float", ["decode.threshold=abc"], "decode.threshold"),
    ("threshold_negative", ["decode.threshold=-1"], "decode.threshold must be > 0"),
    ("confidence_above_one", ["decode.score=confidence", "decode.threshold=1.5"], "decode.threshold must be in (0, 1)"),
    ("block_not_dividing", ["decode.block_size=24"], "decode.block_size (24) must divide"),
    ("decode_gen_length", ["decode.gen_length=32"], "decode.gen_length (32) must equal task.gen_length (64)"),
    ("d3llm_fraction", ["decode=d3llm", "decode.block_add_threshold=1.5"], "decode.block_add_threshold"),
    ("kv_cache_needs_d3llm", ["decode.kv_cache=true"], "decode.kv_cache=true needs decode.rule=d3llm"),
    ("unset_env_var", ["model.path=${oc.env:D3LLM_NO_SUCH_VAR}"], "model.path"),
    ("n_test_negative", ["task.n_test=-5"], "task.n_test must be >= 1"),
    ("gen_length_short", ["task.gen_length=20"], "task.gen_length must be >="),
    ("n_head_zero", ["model.arch.n_head=0"], "model.arch.n_head must be >= 1"),
    ("logger_name", ["logger.name=tensorboard"], "logger.name must be one of csv, wandb, none"),
    ("trainer_reserved", ["stage=teacher", "trainer.max_steps=10"], "trainer.max_steps is set by the training"),
    ("trainer_reserved_added", ["stage=distill", "+trainer.gradient_clip_val=3"], "use stage.grad_clip"),
    ("trainer_precision", ["stage=teacher", "trainer.precision=8"], "trainer.precision must be one of"),
    ("trainer_not_an_arg", ["stage=teacher", "+trainer.max_stepz=3"], "trainer.max_stepz is not a lightning.Trainer"),
    ("fsdp_offload_on_cpu", ["stage=distill", "trainer=fsdp", "trainer.accelerator=cpu",
                             "trainer.strategy=fsdp_cpu_offload"], "on CPU processes (trainer.accelerator=cpu) use"),
    ("fsdp_cpu_bf16", ["stage=distill", "trainer=fsdp", "trainer.accelerator=cpu"], "add trainer.precision=32-true"),
    ("fsdp_one_device", ["stage=distill", "trainer=fsdp", "trainer.devices=1"], "one process has nothing to shard"),
    ("distill_accumulate", ["stage=distill", "+trainer.accumulate_grad_batches=4"],
     "trainer.accumulate_grad_batches=4 is not supported by stage=distill"),
    ("fsdp_teacher", ["stage=teacher", "trainer=fsdp"], "stage=teacher trains the embedded tiny teacher"),
    ("fsdp_wrap", ["stage=distill", "trainer=fsdp", "trainer.fsdp_wrap=block"], "trainer.fsdp_wrap must be one of"),
    ("teacher_lr", ["stage=teacher", "stage.lr=0"], "stage.lr must be > 0"),
    ("teacher_steps_word", ["stage=teacher", "stage.max_steps=many"], "stage.max_steps"),
    ("eval_split", ["stage=eval", "stage.split=dev"], "stage.split must be test, validation or train"),
    ("benchmark_split", ["stage=eval", "task=gsm8k_cot", "stage.split=validation"],
     "stage.split=validation applies to the embedded task"),
    ("trajectory_shard", ["stage=trajectory", "stage.num_shards=2", "stage.shard=2"], "stage.shard must be in"),
    ("trajectory_temperature", ["stage=trajectory", "decode.temperature=0.5"], "decodes at stage.temperatures"),
    ("decode_temperature", ["decode.temperature=-1"], "decode.temperature must be >= 0"),
    ("import_no_source", ["stage=trajectory_import", "stage.mask_token_id=1"], "stage.source must name"),
    ("import_tiny_family", ["stage=trajectory_import", "stage.source=x"],
     "stage.mask_token_id: model.family=tiny has no published d3LLM trajectories"),
    ("distill_lora_r", ["stage=distill", "distill.lora.r=0"], "distill.lora.r must be >= 1"),
    ("distill_window", ["stage=distill", "distill.curriculum.window_sizes=[8,100]"], "distill.curriculum.window_sizes"),
    ("distill_fixed_window", ["stage=distill", "distill.curriculum.fixed_window=128"], "curriculum.fixed_window"),
    ("report_no_runs", ["stage=report"], "stage.runs must list"),
    ("pipeline_thresholds", ["stage=pipeline", "stage.thresholds=[0.5,-1]"], "stage.thresholds must be positive"),
    ("ablation_variant", ["stage=ablation", "stage.variants=[full,fancy]"], "stage.variants must list"),
    # sweeps: the pre-flight stops at the first bad point, before any job runs
    ("sweep_bad_point", ["-m", "stage=eval", "decode.threshold=0.5,-1,1.0"], "sweep job #1 (decode.threshold=-1)"),
    ("sweep_preset_bad_point", ["experiment=sweep_threshold", "decode.score=confidence"], "(decode.threshold=1.0)"),
    ("sweep_bad_group", ["-m", "stage=eval,bogus"], "sweep job #1 (stage=bogus): unknown stage 'bogus'"),
    ("sweep_range", ["-m", "stage=distill", "distill.lora.r=range(0,8,4)"], "(distill.lora.r=0): distill.lora.r"),
    # missing artifacts: the job names the key and the command that makes them
    ("eval_no_teacher", ["model.path={none}"], "model.path={none} holds no checkpoint; create it with `python -m "
                                               "d3llm_pipeline stage=teacher`"),
    ("eval_no_student", ["model=student"], "create it with `python -m d3llm_pipeline stage=distill`"),
    ("distill_no_teacher", ["stage=distill", "model.path={none}"], "stage.teacher_path={none} holds no checkpoint"),
    ("distill_no_trajectories", ["stage=distill", "stage.trajectories={none}"], "stage.trajectories={none} holds no"),
    ("trajectory_no_teacher", ["stage=trajectory", "model.path={none}"], "model.path={none} holds no checkpoint"),
    ("merge_no_shards", ["stage=trajectory_merge", "stage.out_dir={none}"], "holds no trajectory shards"),
    ("import_offline", ["stage=trajectory_import", "stage.mask_token_id=1", "stage.source=d3LLM/nope"],
     "stage.source=d3LLM/nope is not a"),
    ("report_missing_runs", ["stage=report", "stage.runs=[{none}]"], "holds no finished eval jobs"),
    # foreign or corrupt files
    ("eval_truncated_config", ["model.path={setup}"], "{setup}/config.json (model.path) is not valid JSON",
     "truncated_config"),
    ("eval_truncated_weights", ["model.path={setup}"], "{setup}/model.safetensors (model.path) is unreadable",
     "truncated_weights"),
    ("eval_garbage_weights", ["model.path={setup}"], "{setup}/model.safetensors", "garbage_weights"),
    ("eval_unknown_model_type", ["model.path={setup}"], "has model_type 'mamba-xl'", "unknown_model_type"),
    ("eval_no_weights", ["model.path={setup}"], "no weights (model.safetensors)", "no_weights"),
    ("eval_corrupt_tokenizer", ["model.path={setup}"], "cannot load the checkpoint model.path={setup}",
     "corrupt_tokenizer"),
    ("distill_truncated_weights", ["stage=distill", "model.path={setup}"], "{setup}/model.safetensors",
     "truncated_weights"),
    ("distill_corrupt_trajectories", ["stage=distill", "stage.trajectories={setup}"], "{setup}/merged is corrupt",
     "corrupt_trajectories"),
    ("distill_corrupt_chunk", ["stage=distill", "stage.trajectories={setup}"], "chunk-00000.parquet", "corrupt_chunk"),
    ("distill_unfinished_shard", ["stage=distill", "stage.trajectories={setup}"], "is unfinished", "unfinished"),
    ("trajectory_truncated_config", ["stage=trajectory", "model.path={setup}"], "{setup}/config.json",
     "truncated_config"),
    ("import_not_a_dataset", ["stage=trajectory_import", "stage.mask_token_id=1", "stage.source={setup}"],
     "stage.source={setup} is not a", "not_a_dataset"),
    # output dirs that cannot be written
    ("teacher_unwritable", ["stage=teacher", "stage.out_dir={afile}/t"], "cannot write to stage.out_dir={afile}/t"),
    ("distill_unwritable", ["stage=distill", "paths.artifacts_dir={afile}/a", f"model.path={TEACHER}",
                            f"stage.trajectories={TRAJ}"], "cannot write to stage.out_dir={afile}/a/student"),
    ("trajectory_unwritable", ["stage=trajectory", "stage.out_dir={afile}/tr"], "cannot write to stage.out_dir="),
    ("import_unwritable", ["stage=trajectory_import", "stage.mask_token_id=1", "stage.source={none}",
                           "stage.out_dir={afile}/i"], "cannot write to stage.out_dir={afile}/i"),
    ("run_dir_unwritable", ["hydra.run.dir={afile}/run"], "cannot write to hydra.run.dir={afile}/run"),
    ("sweep_dir_unwritable", ["-m", "decode.threshold=0.5,1.0", "hydra.sweep.dir={afile}/s"], "hydra.sweep.dir="),
    ("pipeline_unwritable", ["stage=pipeline", "paths.artifacts_dir={afile}/a"], "cannot write to stage.out_dir="),
    # checks made inside pipeline / ablation, before their first step
    ("pipeline_step_value", ["stage=pipeline", "stage.step_overrides.teacher=['stage.lr=-1']"], "step teacher"),
    ("ablation_decoder", ["stage=ablation", "decode=vanilla"], "drop decode=... from the command line"),
]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(key: str, value):
    def edit(ckpt: Path) -> None:
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**config, key: value}))
    return edit


def _unmerged(traj: Path) -> Path:
    shutil.rmtree(traj / "merged")
    return next(traj.glob("shard-*"))


# setup name -> (what it copies, how it breaks the copy)
SETUPS = {
    "truncated_config": ("teacher", lambda d: _truncate(d / "config.json")),
    "truncated_weights": ("teacher", lambda d: _truncate(d / "model.safetensors")),
    "garbage_weights": ("teacher", lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file")),
    "unknown_model_type": ("teacher", _edit_config("model_type", "mamba-xl")),
    "no_weights": ("teacher", lambda d: (d / "model.safetensors").unlink()),
    "corrupt_tokenizer": ("teacher", lambda d: _truncate(d / "tokenizer.json")),
    "corrupt_trajectories": ("trajectories", lambda d: [_truncate(p) for p in (d / "merged").glob("*.arrow")]),
    "corrupt_chunk": ("trajectories", lambda d: _truncate(_unmerged(d) / "chunk-00000.parquet")),
    "unfinished": ("trajectories", lambda d: (_unmerged(d) / "chunk-00000.json").unlink()),
    "not_a_dataset": ("teacher", lambda d: None),  # a model checkpoint is no dataset
}


def cli(cwd: Path, env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d3llm_pipeline", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def base_env(art: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "D3LLM_ARTIFACTS": str(art)}
    for key in ("D3LLM_ROOT", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A random tiny teacher, 16 of its trajectories, the broken copies of SETUPS and a regular file."""
    from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
    from d3llm_pipeline.stages import call_stage
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    ws = tmp_path_factory.mktemp("bad_inputs")
    art = ws / "artifacts"
    tok = build_tokenizer()
    save_tiny_teacher(build_tiny_teacher(tok, max_positions=88, n_embd=32, n_layer=1, n_head=2, seed=0), tok,
                      art / "teacher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        call_stage(compose(config_name="config", overrides=[
            f"paths.artifacts_dir={art}", "threads=1", "stage=trajectory", "stage.n_prompts=16", "task.n_train=32",
            f"+output_dir={ws / 'run_traj'}"]))
    sources = {"teacher": art / "teacher", "trajectories": art / "trajectories" / "tiny-teacher"}
    for name, (source, breaks) in SETUPS.items():
        shutil.copytree(sources[source], ws / "bad" / name)
        breaks(ws / "bad" / name)
    (ws / "afile").write_text("a regular file\n")
    return ws


def placeholders(ws: Path, setup: str | None) -> dict[str, str]:
    return {"art": str(ws / "artifacts"), "none": str(ws / "nowhere"), "afile": str(ws / "afile"),
            "setup": str(ws / "bad" / (setup or "-"))}


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():  # (not str.format: ${oc.env:...} interpolations hold braces too)
        text = text.replace(f"{{{key}}}", value)
    return text


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and dir under `roots`: (size, mtime): what a later run would find."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*")}


def leftovers(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*") if p.name.endswith((".tmp", ".lock", ".lightning"))}


def run_case(ws: Path, case: tuple) -> dict:
    name, args, expected, setup = (*case, None)[:4]
    values = placeholders(ws, setup)
    cwd = ws / "cases" / name
    cwd.mkdir(parents=True)
    watched = (ws / "artifacts", ws / "bad")
    before, junk_before = snapshot(*watched), leftovers(ws)
    proc = cli_in_process(cwd, *[fill(arg, values) for arg in args], env={"D3LLM_ARTIFACTS": str(ws / "artifacts")})
    return {"proc": proc, "expected": fill(expected, values), "changed": sorted(
        set(snapshot(*watched).items()) ^ set(before.items())), "junk": sorted(leftovers(ws) - junk_before)}


@pytest.fixture(scope="module")
def results(workspace, request) -> dict[str, dict]:
    """Run the selected cases, one after another in this process (~0.5 s each: no interpreter start)."""
    selected = {item.callspec.id for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input_is_one_line" and hasattr(item, "callspec")}
    return {case[0]: run_case(workspace, case) for case in CASES if case[0] in selected}


def test_table_is_well_formed():
    names = [case[0] for case in CASES]
    assert len(names) == len(set(names)) and len(CASES) >= 45
    assert all(len(case) == 3 or case[3] in SETUPS for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line(results, case):
    result = results[case[0]]
    proc = result["proc"]
    output = f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert result["expected"] in lines[0], output
    assert "Traceback" not in proc.stdout + proc.stderr
    assert result["changed"] == [], "the failed run changed the artifacts"
    assert result["junk"] == [], "the failed run left temp / lock / resume files"


def test_a_failed_sweep_job_is_recorded_and_the_others_still_run(workspace):
    # Validation cannot see this one: job #1's checkpoint is missing. It writes error.txt and the sweep goes on.
    sweep, teacher, missing = workspace / "sweep_failing", workspace / "artifacts" / "teacher", workspace / "nowhere"
    proc = cli(workspace, base_env(workspace / "artifacts"), "-m", "stage=eval",
               f"model.path={teacher},{missing},{teacher}", "stage.limit=2", "task.n_train=64", "task.n_val=4", "task.n_test=4", "threads=1",
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0, proc.stderr[-3000:]  # the end-of-sweep callback's verdict on a sweep with a failure
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    reason = (sweep / "1" / "error.txt").read_text().strip()
    assert reason.startswith(f"model.path={missing} holds no checkpoint") and "\n" not in reason
    assert f"error: {reason}" in proc.stderr.splitlines() and "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((sweep / "aup.json").read_text())
    assert report["failed_jobs"] == [f"{sweep / '1'} ({reason})"]
    assert [len(curve["points"]) for curve in report["curves"]] == [2]


def test_an_unexpected_error_in_a_sweep_job_goes_to_error_txt(tmp_path, monkeypatch):
    import d3llm_pipeline.stages as stages

    def crash(cfg):
        raise RuntimeError("simulated crash")

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.root_dir={tmp_path}", f"+output_dir={tmp_path}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(stages, "_in_multirun", lambda: True)
    monkeypatch.setattr(stages, "call_stage", crash)
    assert stages.run_stage(cfg) == {"error": "RuntimeError: simulated crash"}  # returned: the sweep goes on
    assert (tmp_path / "error.txt").read_text() == "RuntimeError: simulated crash (traceback in the job's log)\n"
    monkeypatch.setattr(stages, "_in_multirun", lambda: False)
    with pytest.raises(RuntimeError, match="simulated crash"):  # a single run shows the bug's traceback
        stages.run_stage(cfg)


def test_debug_and_hydra_full_error_show_the_traceback(workspace):
    env, cwd = base_env(workspace / "artifacts"), workspace / "debug"
    cwd.mkdir()
    proc = cli(cwd, env, f"model.path={workspace / 'nowhere'}", "debug=true")  # a job's error
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "holds no checkpoint" in proc.stderr
    proc = cli(cwd, {**env, "HYDRA_FULL_ERROR": "1"}, "seed=foo")  # a pre-flight error
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "seed must be an integer" in proc.stderr


def test_require_writable_checks_free_space_and_creates_nothing(tmp_path):
    from d3llm_pipeline.errors import PipelineError
    from d3llm_pipeline.stages.checks import require_writable

    require_writable(tmp_path / "new" / "dir", "stage.out_dir", need_bytes=1)
    with pytest.raises(PipelineError, match=r"cannot write to stage\.out_dir=.*MiB free"):
        require_writable(tmp_path / "new" / "dir", "stage.out_dir", need_bytes=2**62)
    assert list(tmp_path.iterdir()) == []
