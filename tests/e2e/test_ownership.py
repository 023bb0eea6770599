"""Never destroy what we did not make: every stage that writes refuses a path holding something else.

For each writing stage and each output path it writes (stage.out_dir, the `.lightning` resume dir beside it, the
run dir, the artifacts pipeline / ablation steps write) the path is pointed at a pre-existing foreign directory (a
fake checkpoint with a sentinel file); the CLI must exit 2 with one `error:` line naming the path, and the directory
must be byte-for-byte unchanged. Plus the ownership rules themselves (ownership.py) and the reproduction of the
report: `stage=teacher model=llada_8b_instruct model.path=<a user's LLaDA copy>` once replaced that checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import OFFICIAL, cli_in_process

from d3llm_pipeline import ownership
from d3llm_pipeline.errors import PipelineError

F = "{foreign}"
# (id, command line with {foreign} = the foreign dir's path, the dir's name when it must sit at a derived path)
CASES = [
    ("teacher_out", ["stage=teacher", f"model.path={F}"], None),
    ("teacher_out_overwrite", ["stage=teacher", f"model.path={F}", "stage.overwrite=true"], None),
    ("teacher_resume_dir", ["stage=teacher", "model.path={root}/mine"], "mine.lightning"),
    ("teacher_run_dir", ["stage=teacher", f"hydra.run.dir={F}"], None),
    ("trajectory_out", ["stage=trajectory", f"stage.out_dir={F}"], None),
    ("trajectory_out_overwrite", ["stage=trajectory", f"stage.out_dir={F}", "stage.overwrite=true"], None),
    ("trajectory_merge_out", ["stage=trajectory_merge", f"stage.out_dir={F}"], None),
    ("trajectory_import_out", ["stage=trajectory_import", "stage.source={root}/src", f"stage.out_dir={F}"], None),
    ("distill_out", ["stage=distill", f"paths.student_dir={F}"], None),
    ("distill_out_overwrite", ["stage=distill", f"stage.out_dir={F}", "stage.overwrite=true"], None),
    ("distill_resume_dir", ["stage=distill", "paths.student_dir={root}/mine"], "mine.lightning"),
    ("export_out", ["stage=export", f"stage.out_dir={F}"], None),
    ("eval_run_dir", ["stage=eval", f"hydra.run.dir={F}"], None),
    ("eval_sweep_dir", ["-m", "stage=eval", "decode.threshold=0.5,1.0", f"hydra.sweep.dir={F}"], None),
    ("report_run_dir", ["stage=report", "stage.runs=[{root}]", f"hydra.run.dir={F}"], None),
    ("pipeline_teacher", ["stage=pipeline", f"model.path={F}"], None),
    ("pipeline_trajectories", ["stage=pipeline", f"stage.step_overrides.trajectory=['stage.out_dir={F}']"], None),
    ("pipeline_student", ["stage=pipeline", f"paths.student_dir={F}"], None),
    ("pipeline_run_dir", ["stage=pipeline", f"hydra.run.dir={F}"], None),
    ("ablation_teacher", ["stage=ablation", f"model.path={F}"], None),
    ("ablation_student", ["stage=ablation", f"paths.student_dir={F}"], None),
    ("ablation_variant_student", ["stage=ablation", "stage.variants=[random_masking]", "stage.seeds=[1]",
                                  "paths.artifacts_dir={root}/art"], "art/ablation/random_masking/student_seed1"),
    ("ablation_run_dir", ["stage=ablation", f"hydra.run.dir={F}"], None),
]


def make_foreign(path: Path) -> Path:
    """A user's checkpoint: config.json, a sentinel weights file, a sub-dir; no artifact.json of ours."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llada", "note": "a user's checkpoint"}) + "\n")
    (path / "model.safetensors").write_text("precious\n")
    (path / "notes").mkdir()
    (path / "notes" / "README").write_text("do not delete\n")
    return path


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under `path` (hidden ones too) -> its bytes (None for a dir): byte-for-byte equality."""
    return {str(p.relative_to(path)): None if p.is_dir() else p.read_bytes() for p in sorted(path.rglob("*"))}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_foreign_output_dir_is_refused_and_untouched(tmp_path, case):
    _, args, name = case
    foreign = make_foreign(tmp_path / (name or "precious"))
    before = tree(foreign)
    args = [a.replace(F, str(foreign)).replace("{root}", str(tmp_path)) for a in args]
    result = cli_in_process(tmp_path, *args)
    errors = error_lines(result.stderr)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr)
    assert len(errors) == 1 and str(foreign) in errors[0], result.stderr
    assert "holds no artifact.json of ours, so the pipeline will not write into or replace it" in errors[0]
    assert "Traceback" not in result.stderr
    assert tree(foreign) == before
    assert not any(p.name.startswith(f".{foreign.name}.") for p in foreign.parent.iterdir())  # no temp dirs left


def test_reproduction_teacher_over_a_real_checkpoint(tmp_path):
    """The report's command: a real family's stage=teacher never trains the tiny model over model.path."""
    llada = tmp_path / "llada"
    llada.mkdir()
    shutil.copy(OFFICIAL / "llada_tiny" / "config.json", llada / "config.json")
    (llada / "model.safetensors").write_text("precious\n")
    result = cli_in_process(tmp_path, "stage=teacher", "model=llada_8b_instruct", f"model.path={llada}",
                            "stage.max_steps=5", "stage.warmup_steps=1")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "stage=teacher trains the embedded tiny teacher" in line and "stage=pipeline" in line
    assert (llada / "model.safetensors").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llada"]  # refused before Hydra made a run dir


def test_ablation_with_a_real_family_uses_the_checkpoint_as_it_is(tmp_path):
    """stage=ablation with a real family checks the checkpoint (as stage=pipeline does) and never trains over it;
    here it stops at the trajectory step (the fixture has no tokenizer), with the checkpoint intact."""
    llada = tmp_path / "llada"
    shutil.copytree(OFFICIAL / "llada_tiny", llada)
    before = tree(llada)
    result = cli_in_process(tmp_path, "stage=ablation", "model=llada_8b_instruct", f"model.path={llada}",
                            "stage.variants=[full]", "stage.seeds=[0]", f"paths.artifacts_dir={tmp_path / 'art'}")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "holds no tokenizer" in line
    assert tree(llada) == before
    assert not (tmp_path / "art" / "teacher").exists()


def test_distill_advice_fits_a_real_family(tmp_path):
    """A missing real checkpoint names the Hub id / model.path, never `stage=teacher` (which trains the tiny one)."""
    result = cli_in_process(tmp_path, "stage=distill", "model=llada_8b_instruct", "distill=llada")
    (line,) = error_lines(result.stderr)
    assert result.returncode == 2 and "GSAI-ML/LLaDA-8B-Instruct" in line and "stage=teacher" not in line
    missing = cli_in_process(tmp_path, "stage=distill", "model=llada_8b_instruct", f"model.path={tmp_path / 'no'}")
    (line,) = error_lines(missing.stderr)
    assert "holds no checkpoint (no config.json)" in line and "stage=teacher" not in line


# --- the rules themselves -------------------------------------------------------------------------------------


def test_is_ours(tmp_path):
    assert ownership.is_ours(tmp_path / "absent", "teacher")
    (tmp_path / "empty").mkdir()
    assert ownership.is_ours(tmp_path / "empty", "teacher")
    foreign = make_foreign(tmp_path / "foreign")
    assert not ownership.is_ours(foreign, "teacher") and not ownership.is_ours(foreign, "run")
    (tmp_path / "file").write_text("x")
    assert not ownership.is_ours(tmp_path / "file", "teacher")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert not ownership.is_ours(tmp_path / "link", "teacher")  # replacing a link acts on what it points to
    mine = make_foreign(tmp_path / "mine")
    ownership.write_marker(mine, "student")
    assert ownership.is_ours(mine, "student") and not ownership.is_ours(mine, "teacher")  # of the same kind only


def test_legacy_artifacts_are_still_ours(tmp_path):
    """Artifacts written before markers existed: a teacher's training summary, a student's merged/ identity, a
    trajectory dir's shards or merge, a Hydra run dir or a job's metrics.json."""
    teacher = make_foreign(tmp_path / "teacher")
    (teacher / "training_summary.json").write_text(json.dumps({"stage": "teacher"}))
    student = tmp_path / "student"
    (student / "merged").mkdir(parents=True)
    (student / "merged" / "artifact.json").write_text(json.dumps({"kind": "student", "fingerprint": "x"}))
    trajectories = tmp_path / "traj"
    (trajectories / "shard-00000-of-00001").mkdir(parents=True)
    (trajectories / "shard-00000-of-00001" / "run.json").write_text("{}")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    job = tmp_path / "job"
    job.mkdir()
    (job / "metrics.json").write_text(json.dumps({"stage": "eval"}))
    for path, kind in ((teacher, "teacher"), (student, "student"), (trajectories, "trajectories"), (run, "run"),
                       (job, "run")):
        assert ownership.is_ours(path, kind), path
    (teacher / "training_summary.json").write_text(json.dumps({"stage": "distill"}))
    assert not ownership.is_ours(teacher, "teacher")


def test_check_ours_names_the_path_and_the_way_out(tmp_path):
    foreign = make_foreign(tmp_path / "foreign")
    with pytest.raises(PipelineError) as err:
        ownership.check_ours(foreign, "teacher", "stage.out_dir")
    message = str(err.value)
    assert str(foreign) in message and "model.path=<new dir>" in message and "\n" not in message
    mine = tmp_path / "mine"
    ownership.claim(mine, "trajectories", "stage.out_dir")
    with pytest.raises(PipelineError, match="holds our trajectories, not a teacher"):
        ownership.check_ours(mine, "teacher", "stage.out_dir")


def test_staged_replaces_only_our_own(tmp_path):
    final = tmp_path / "out"
    with ownership.staged(final, "export", "stage.out_dir") as tmp:
        (tmp / "weights").write_text("v1")
    assert (final / "weights").read_text() == "v1" and ownership.marker_kind(final) == "export"
    with ownership.staged(final, "export", "stage.out_dir") as tmp:  # ours: replaced whole
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in final.iterdir()) == ["artifact.json", "other"]
    with pytest.raises(RuntimeError), ownership.staged(final, "export", "stage.out_dir") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash while writing")
    assert sorted(p.name for p in final.iterdir()) == ["artifact.json", "other"]  # a failed write changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and leaves no temp dir
    foreign = make_foreign(tmp_path / "foreign")
    before = tree(foreign)
    with pytest.raises(PipelineError), ownership.staged(foreign, "export", "stage.out_dir"):
        pytest.fail("a foreign dir must be refused before any work")
    assert tree(foreign) == before


def test_staged_rechecks_at_the_swap(tmp_path):
    """Another job (or a user) put something foreign there while this one was writing: refused, both kept."""
    final = tmp_path / "out"
    with pytest.raises(PipelineError), ownership.staged(final, "teacher", "stage.out_dir") as tmp:
        (tmp / "weights").write_text("ours")
        make_foreign(final)
    assert (final / "model.safetensors").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_remove_ours(tmp_path):
    mine = ownership.claim(tmp_path / "mine", "run", "output_dir")
    (mine / "metrics.json").write_text("{}")
    ownership.remove_ours(mine, "run", "output_dir")
    assert not mine.exists()
    ownership.remove_ours(tmp_path / "absent", "run", "output_dir")  # nothing there: nothing to do
    foreign = make_foreign(tmp_path / "foreign")
    with pytest.raises(PipelineError):
        ownership.remove_ours(foreign, "run", "output_dir")
    assert (foreign / "model.safetensors").is_file()
