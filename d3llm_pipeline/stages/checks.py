"""Checks a stage runs on the artifacts it reads and the dirs it writes, before it does any work.

    require_trajectories(stage.trajectories, "stage.trajectories")     # a readable trajectory dataset
    require_writable(stage.out_dir, "stage.out_dir", need_bytes=...)   # creatable, writable, enough free space

Checkpoints are checked by their model family (models/families/: the tiny family's checks, the official-format
checks of LLaDA / Dream); this module covers the rest.

Each failure is one PipelineError line naming the key, the file and the command that makes the artifact. The
checks only read (stat, open, parse headers): a failed check leaves nothing behind that a later run would trip
over. No torch import here, so the entry point's pre-flight can use require_writable cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from d3llm_pipeline import ownership
from d3llm_pipeline.errors import PipelineError, first_line
from d3llm_pipeline.models.families.checkpoint import (  # noqa: F401  (model_cmd, TEACHER_CMD: re-exported)
    DISTILL_CMD,
    TEACHER_CMD,
    TRAJECTORY_CMD,
    model_cmd,
)
from d3llm_pipeline.ownership import require_writable  # noqa: F401  (re-exported: the stages check their dirs)


def _arrow_problem(merged: Path) -> str | None:
    """Why the `datasets.save_to_disk` dir `merged` cannot be loaded (missing / truncated arrow files), or None."""
    import pyarrow as pa

    try:
        state = json.loads((merged / "state.json").read_text())
        json.loads((merged / "dataset_info.json").read_text())
        files = [merged / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its state.json / dataset_info.json is missing or corrupt ({first_line(err)})"
    for data_file in files:
        try:  # memory-mapped: reading the record batches costs no copy, even for a large dataset
            with pa.memory_map(str(data_file)) as source:
                pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowException) as err:
            return f"{data_file.name}: {first_line(err)}"
    return None


def require_trajectories(directory: str | Path, key: str) -> Path:
    """A trajectory dataset (merged, or shards that stage=trajectory_merge can merge) that can be read."""
    directory = Path(directory)
    merged = directory / "merged"
    if (merged / "merge.json").is_file():
        problem = _arrow_problem(merged)
        if problem:
            from d3llm_pipeline.trajectories.store import trajectories_fix  # (datasets: only on failure)

            raise PipelineError(f"the trajectory dataset {key}={merged} is corrupt ({problem}); "
                                f"{trajectories_fix(directory)}")
        return directory
    if not any(directory.glob("shard-*/run.json")):
        raise PipelineError(f"{key}={directory} holds no trajectories; create them with `{TRAJECTORY_CMD}` "
                            "(same model= and paths.* overrides), or point it at an existing trajectory dir")
    _check_shards(directory, key)
    return directory


def _check_shards(directory: Path, key: str) -> None:
    """Unmerged shards: the checks merging will make (same run, all shards, every chunk committed and intact),
    made here without writing, so a stage that reads them fails before it writes anything of its own."""
    from d3llm_pipeline.trajectories import store

    infos = []
    for run_file in sorted(directory.glob("shard-*/run.json")):
        try:
            infos.append((run_file.parent, json.loads(run_file.read_text())))
        except (OSError, ValueError) as err:
            raise PipelineError(f"{run_file} ({key}) is corrupt ({first_line(err)}); relabel that shard with "
                                f"`{TRAJECTORY_CMD}` and stage.overwrite=true") from None
    counts = {info.get("num_shards") for _, info in infos}
    if len({info.get("fingerprint") for _, info in infos}) != 1 or len(counts) != 1:
        raise PipelineError(f"{key}={directory} mixes shards of different runs; remove the stale shard-* dirs")
    missing = sorted(set(range(counts.pop() or 0)) - {info.get("shard") for _, info in infos})
    if missing:
        raise PipelineError(f"{key}={directory}: shards {missing} have not run; run them with the same "
                            f"`{TRAJECTORY_CMD}` command and stage.shard=<i>")
    for shard_dir, info in infos:
        for chunk, ids in enumerate(info.get("layout", [])):  # chunk_status raises for a corrupt or foreign chunk
            if store.chunk_status(shard_dir, chunk, info["fingerprint"], tuple(ids)) != "done":
                raise PipelineError(f"{key}={directory}: {shard_dir.name} is unfinished (chunk {chunk} was never "
                                    f"written); rerun the same `{TRAJECTORY_CMD}` command to finish it")


def dir_bytes(path: str | Path) -> int:
    """Total size of the files under `path` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def teacher_bytes(arch: Any, task: Any, vocab: int = 64) -> int:
    """Disk a tiny-teacher run needs (model.arch, task): float32 weights, plus a Lightning checkpoint holding them
    and two Adam moments, plus a MiB for the tokenizer and JSON files."""
    positions = task.prompt_length + task.gen_length
    params = 12 * arch.n_layer * arch.n_embd**2 + (vocab + positions) * arch.n_embd
    return 4 * 4 * params + 2**20


def check_distill_io(stage: Any, model_family: str) -> None:
    """stage=distill's inputs (teacher, trajectories) and output dir, before anything is loaded."""
    from d3llm_pipeline.models.families import family_of, get_family  # (no torch import)

    # The teacher's family by its config.json, as make_student picks it; else the configured model.family, whose
    # checks say what is wrong with a dir that has none (a real family's: download it, never stage=teacher)
    family = family_of(stage.teacher_path) or get_family(model_family)
    teacher, _ = family.check(stage.teacher_path, "stage.teacher_path", TEACHER_CMD)
    require_trajectories(stage.trajectories, "stage.trajectories")
    # merged student (teacher-sized) + adapter + a Lightning checkpoint with optimiser state: ~3x the teacher
    require_writable(stage.out_dir, "stage.out_dir", need_bytes=3 * dir_bytes(teacher))


# stage -> the kind of artifact it writes at stage.out_dir (ownership.py), and whether a `<out_dir>.lightning`
# resume dir sits beside it. Every stage also writes its run dir (metrics.json, logs), of kind "run".
STAGE_OUTPUTS = {"teacher": ("teacher", True), "distill": ("student", True), "trajectory": ("trajectories", False),
                 "trajectory_merge": ("trajectories", False), "trajectory_import": ("trajectories", False),
                 "export": ("export", False)}


def run_dir_of(cfg: Any) -> tuple[str, Path]:
    """(the key that sets it, the dir) where a stage writes metrics.json and its logs."""
    from d3llm_pipeline.runtime import output_dir_of

    return ("output_dir" if cfg.get("output_dir") else "hydra.run.dir"), Path(output_dir_of(cfg))


def check_outputs(cfg: Any) -> None:
    """Every dir the stage will write (stage.out_dir, a resume dir beside it, its run dir) is new, empty or ours:
    a user's checkpoint or data is never written into or replaced (one line naming the path and the way out)."""
    name = cfg.stage.name
    if name in STAGE_OUTPUTS and not (name == "distill" and cfg.stage.get("dry_run")):
        kind, resume = STAGE_OUTPUTS[name]
        out = Path(str(cfg.stage.out_dir))
        ownership.check_ours(out, kind, "stage.out_dir")
        if resume:
            ownership.check_ours(out.with_name(out.name + ".lightning"), kind, "stage.out_dir")
    key, run_dir = run_dir_of(cfg)
    ownership.check_ours(run_dir, "run", key)


def precheck(cfg: Any) -> None:
    """The output checks of every stage (check_outputs), then the artifact checks of the stages whose modules are
    slow to import (Lightning, PEFT, datasets: seconds), run by call_stage before the import, so a missing teacher
    is reported at once. The stages repeat them."""
    from d3llm_pipeline.config.schema import ModelConfig, load_section
    from d3llm_pipeline.config.stage_schemas import STAGE_SCHEMAS

    check_outputs(cfg)
    name = cfg.stage.name
    if name == "distill":
        stage = load_section(cfg.stage, STAGE_SCHEMAS[name], "stage")
        if not stage.dry_run:  # a dry run reads the teacher's shape only (it may be a preset not downloaded)
            check_distill_io(stage, str(cfg.model.family))
    elif name == "trajectory":
        from d3llm_pipeline.models.families import get_family  # (no torch import)

        model = load_section(cfg.model, ModelConfig, "model")
        get_family(model.family).check(model.path, "model.path", model_cmd(model.path), backend=model.backend)
        require_writable(load_section(cfg.stage, STAGE_SCHEMAS[name], "stage").out_dir, "stage.out_dir")
