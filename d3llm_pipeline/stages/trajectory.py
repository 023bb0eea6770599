"""stage=trajectory: run the teacher over training prompts and store its pseudo-trajectories.

    python -m d3llm_pipeline stage=trajectory                                   # default: 1 token / forward
    python -m d3llm_pipeline -m stage=trajectory stage.num_shards=2 stage.shard=0,1 hydra/launcher=joblib
    python -m d3llm_pipeline stage=trajectory_merge                             # after a sharded run
    python -m d3llm_pipeline stage=trajectory model=llada_8b_instruct task=dparallel_prompts   # a real prompt set

The prompts come from the task: the embedded task's `stage.split`, or a prompt set (task.kind=prompt_sets: its
`task.split` of a Hub dataset or `task.data_files`, tasks/prompt_sets.py), labelled and graded by
trajectories/labels.py.

Per sample we keep the teacher's final response and, per response position, the forward pass that revealed it
(`unmask_step`, relative to the response start), plus the grade, the forwards and the attempt used. Work is
written in chunks (temp file + rename + manifest); a rerun skips finished chunks, so a crash or `kill -9`
costs at most one chunk and the result equals an uninterrupted run's. Decoding is deterministic (temperature
noise is keyed by sample id), so sharding and resuming never change a row.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from d3llm_pipeline import artifacts, ownership
from d3llm_pipeline.config.schema import ModelConfig, load_section
from d3llm_pipeline.config.stage_schemas import TrajectoryStageConfig
from d3llm_pipeline.decoding import DecodeSpec
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.runtime import provenance
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.checks import require_writable
from d3llm_pipeline.stages.common import prepare_decoding_run
from d3llm_pipeline.tasks.base import LabelSet, Task
from d3llm_pipeline.trajectories import store
from d3llm_pipeline.trajectories.labels import label

log = logging.getLogger(__name__)


def _run_fingerprint(model_cfg: ModelConfig, task: Task, spec: DecodeSpec,
                     stage: TrajectoryStageConfig) -> dict[str, Any]:
    """Everything that changes a row's content (not the shard / chunk layout)."""
    weights = sorted(Path(model_cfg.path).glob("*.safetensors"))
    decode_identity = asdict(spec)
    if spec.rule != "d3llm":  # multi-block knobs do not shape these rows (and must not void older chunks)
        for key in ("block_add_threshold", "decoded_token_threshold", "accept_global_best"):
            decode_identity.pop(key)
    elif spec.accept_global_best is None:  # null = the family's rule: fingerprint the rule that runs
        from d3llm_pipeline.models.families import get_family

        decode_identity["accept_global_best"] = get_family(model_cfg.family).decode_defaults.accept_global_best
    decode_identity.pop("compile")  # how the forward runs, not what it computes: same rows compiled or not
    for key, default in (("cache_plan", "ours"), ("entropy_dtype", "float32")):  # added later: at their
        if decode_identity[key] == default:  # defaults they change nothing, so older chunks stay valid
            decode_identity.pop(key)
    return {
        "teacher": {"name": model_cfg.name, "weights_sha256": [artifacts.file_sha256(p) for p in weights]},
        "task": task.identity(), "split": stage.split, "n_prompts": stage.n_prompts,
        "decode": decode_identity, "temperatures": list(stage.temperatures),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    job = prepare_decoding_run(cfg, TrajectoryStageConfig)  # checks model.path, then loads it
    stage, task, dec, model_cfg, spec = job.stage, job.task, job.decode, job.model_cfg, job.spec
    lm, threads = job.lm, job.threads
    # ~4 int32 columns of prompt + generation per row, written twice (chunks + merged)
    need = 2 * 16 * stage.n_prompts * (task.prompt_length + task.gen_length)
    require_writable(stage.out_dir, "stage.out_dir", need_bytes=need)

    labels = _labels(job, stage)
    n = len(labels)
    start, end = store.shard_range(n, stage.shard, stage.num_shards)
    layout = store.chunk_layout(start, end, stage.chunk_size)
    out_dir = Path(stage.out_dir)
    directory = store.shard_dir(out_dir, stage.shard, stage.num_shards)
    config = _run_fingerprint(model_cfg, task, spec, stage)
    fp = artifacts.fingerprint(config)
    ownership.claim(out_dir, "trajectories", "stage.out_dir")  # never label into what we did not make
    if stage.overwrite:  # (a shard dir inside our claimed trajectory dir)
        shutil.rmtree(directory, ignore_errors=True)
    store.write_run_info(directory, {"fingerprint": fp, "shard": stage.shard, "num_shards": stage.num_shards,
                                     "layout": [list(ids) for ids in layout], "config": config})

    pending = [(c, ids) for c, ids in enumerate(layout) if store.chunk_status(directory, c, fp, ids) == "missing"]
    if pending and layout:
        ownership.remove_ours(out_dir / "merged", "trajectories", "stage.out_dir")  # any new chunk: the merge is stale
    log.info("trajectory shard %d/%d: samples %d..%d, %d of %d chunks to do -> %s", stage.shard, stage.num_shards,
             start, end - 1, len(pending), len(layout), directory)
    n_pending = sum(hi - lo for _, (lo, hi) in pending)
    bar = tqdm(total=end - start, initial=end - start - n_pending, desc=f"trajectories shard {stage.shard}", unit="sample",
               dynamic_ncols=True)
    tic = time.perf_counter()
    for chunk, (lo, hi) in pending:
        rows = label(lm, labels, range(lo, hi), list(range(lo, hi)), spec, stage.temperatures, dec.batch_size)
        store.write_chunk(directory, chunk, rows, fp, (lo, hi))
        bar.update(hi - lo)
    bar.close()
    wall = time.perf_counter() - tic

    shard = store.read_shard(directory, fp, layout)
    summary = {
        "stage": "trajectory", "out_dir": str(out_dir), "shard": stage.shard, "num_shards": stage.num_shards,
        "samples": len(shard), "labelled_now": n_pending, "resumed_chunks": len(layout) - len(pending),
        "correct_fraction": sum(shard["is_correct"]) / max(1, len(shard)),
        "mean_nfe": sum(shard["nfe"]) / max(1, len(shard)), "prompts_truncated": labels.truncated,
        "samples_per_s": n_pending / wall if n_pending and wall > 0 else None, "wall_s": round(wall, 2),
        "fingerprint": fp, "decode": asdict(spec), "temperatures": list(stage.temperatures),
        **provenance(threads),
    }
    if stage.num_shards == 1:
        summary["merged"] = str(out_dir / "merged")
        store.merge_shards(out_dir)
    atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
    rate = f"{summary['samples_per_s']:.1f} samples/s" if summary["samples_per_s"] else "nothing new"
    log.info("trajectory: %d samples (%d new, %s), %.1f%% correct, %.1f forwards/sample -> %s", len(shard), n_pending,
             rate, 100 * summary["correct_fraction"], summary["mean_nfe"], directory)
    return summary


def _labels(job, stage: TrajectoryStageConfig) -> LabelSet:
    """The prompts to label: the first `stage.n_prompts` of the task's `stage.split` (a prompt set: of its own
    `task.split`), encoded for the teacher and graded the task's way (tasks/base.py Task.label_set)."""
    task, lm = job.task, job.lm
    labels = task.label_set(stage.split, stage.n_prompts, job.tokenizer, lm.pad_token_id, lm.eos_token_id,
                            job.model_cfg.family)
    if labels.truncated:
        log.warning("trajectory: %d of %d prompts are longer than task.prompt_length=%d and keep their last "
                    "%d tokens; raise task.prompt_length to keep them whole", labels.truncated, len(labels),
                    task.prompt_length, task.prompt_length)
    return labels


def run_merge(cfg: DictConfig) -> dict[str, Any]:
    """stage=trajectory_merge: verify every shard and concatenate them in order into `<out_dir>/merged`."""
    from d3llm_pipeline.config.stage_schemas import TrajectoryMergeStageConfig

    stage = load_section(cfg.stage, TrajectoryMergeStageConfig, "stage")
    require_writable(stage.out_dir, "stage.out_dir")
    ownership.check_ours(stage.out_dir, "trajectories", "stage.out_dir")
    merged = store.merge_shards(stage.out_dir)
    summary = {"stage": "trajectory_merge", "out_dir": stage.out_dir, "rows": len(merged),
               "correct_fraction": sum(merged["is_correct"]) / max(1, len(merged))}
    atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
    log.info("merged %d trajectory rows -> %s", len(merged), Path(stage.out_dir) / "merged")
    return summary
