"""On-disk trajectory store: sharded, chunked, atomic and verifiable; merged into one `datasets` dataset.

Layout under `out_dir`:
    shard-00000-of-00002/run.json            what produced this shard (fingerprint + readable config)
    shard-00000-of-00002/chunk-00000.parquet rows of one chunk, written to a temp file then renamed
    shard-00000-of-00002/chunk-00000.json    manifest: fingerprint, sample-id range, row count, sha256
    merged/                                  `datasets.Dataset.save_to_disk` of every shard, in order

A chunk counts as done only when its manifest exists, names the same fingerprint and the parquet's sha256
matches; a parquet without a manifest is an interrupted write and is redone. A manifest from another
configuration ("foreign") or a parquet whose hash differs ("corrupt") is an error, never silently used.

    write_chunk(shard_dir, 3, rows, fingerprint, (768, 1024))
    status = chunk_status(shard_dir, 3, fingerprint, (768, 1024))   # "done" | "missing"
    ds = load_trajectories(out_dir)                                  # merged (or merged on the fly)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets

from d3llm_pipeline.artifacts import file_sha256
from d3llm_pipeline.errors import PipelineError
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.ownership import remove_ours, write_marker

INT_LIST = datasets.List(datasets.Value("int32"))
FEATURES = datasets.Features({
    "sample_id": datasets.Value("int64"),  # row of the prompt set (stable across shards and reruns)
    "prompt_ids": INT_LIST,
    "response_ids": INT_LIST,  # the teacher's final generation region (EOS-padded)
    "unmask_step": INT_LIST,  # per response position: the teacher forward (0-based) that revealed it
    "reference_ids": INT_LIST,  # the dataset's reference response (empty when unknown)
    "nfe": datasets.Value("int32"),
    "answer": datasets.Value("string"),  # ground truth
    "predicted": datasets.Value("string"),  # the teacher's extracted answer (null if none)
    "is_correct": datasets.Value("bool"),
    "text": datasets.Value("string"),
    "temperature": datasets.Value("float32"),  # of the attempt stored (null when imported)
    "attempt": datasets.Value("int32"),
})


class ChunkError(PipelineError, RuntimeError):
    """A chunk on disk that must not be used: corrupt, foreign or laid out differently."""


def shard_dir(out_dir: str | Path, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_range(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous [start, end) of rows for `shard`, so concatenating shards in order restores the input."""
    return n * shard // num_shards, n * (shard + 1) // num_shards


def _paths(directory: Path, chunk: int) -> tuple[Path, Path]:
    return directory / f"chunk-{chunk:05d}.parquet", directory / f"chunk-{chunk:05d}.json"


def write_chunk(directory: Path, chunk: int, rows: list[dict[str, Any]], fp: str, ids: tuple[int, int]) -> None:
    """Write rows as one parquet file (temp + rename), then its manifest (the commit point)."""
    parquet, manifest = _paths(directory, chunk)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{parquet.name}.{os.getpid()}.tmp"
    datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, parquet)
    atomic_write_json(manifest, {"fingerprint": fp, "chunk": chunk, "sample_ids": list(ids), "rows": len(rows),
                                 "sha256": file_sha256(parquet)})


def chunk_status(directory: Path, chunk: int, fp: str, ids: tuple[int, int]) -> str:
    """'done' if the chunk is complete and belongs to this run, 'missing' if it must be (re)computed.

    Raises ChunkError for a foreign, re-laid-out or corrupt chunk, with the way out in the message.
    """
    parquet, manifest = _paths(directory, chunk)
    if not manifest.is_file():
        return "missing"  # never committed (a parquet without manifest is an interrupted write)
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        raise ChunkError(f"{manifest} is not valid JSON (corrupt); delete it to recompute the chunk") from None
    if meta.get("fingerprint") != fp:
        raise ChunkError(f"{manifest} was written by a different configuration (fingerprint {meta.get('fingerprint')}"
                         f" != {fp}); use another stage.out_dir or stage.overwrite=true")
    if tuple(meta.get("sample_ids", ())) != tuple(ids):
        raise ChunkError(f"{manifest} covers samples {meta.get('sample_ids')} but this layout expects {list(ids)} "
                         "(stage.chunk_size or the shard count changed); use the original values or a new out_dir")
    if not parquet.is_file() or file_sha256(parquet) != meta.get("sha256"):
        raise ChunkError(f"{parquet} is missing or does not match its manifest's sha256 (corrupt); delete "
                         f"{parquet.name} and {manifest.name} to recompute it")
    return "done"


def chunk_layout(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """Sample-id ranges of the chunks of one shard."""
    return [(lo, min(lo + chunk_size, end)) for lo in range(start, end, chunk_size)]


def read_shard(directory: Path, fp: str, layout: list[tuple[int, int]]) -> datasets.Dataset:
    """All chunks of a finished shard, verified, in order."""
    parts = []
    for chunk, ids in enumerate(layout):
        if chunk_status(directory, chunk, fp, ids) != "done":
            raise ChunkError(f"{directory} is unfinished: chunk {chunk} (samples {ids[0]}..{ids[1] - 1}) is "
                             "missing; rerun the same trajectory command to complete it")
        parts.append(datasets.Dataset.from_parquet(str(_paths(directory, chunk)[0]), features=FEATURES))
    return datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_list([], features=FEATURES)


def write_run_info(directory: Path, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "run.json", info)


def merge_shards(out_dir: str | Path) -> datasets.Dataset:
    """Concatenate every shard of `out_dir` in order into `out_dir/merged` (atomically) and return it."""
    out_dir = Path(out_dir)
    infos = [json.loads(p.read_text()) for p in sorted(out_dir.glob("shard-*/run.json"))]
    if not infos:
        raise ChunkError(f"{out_dir} holds no trajectory shards; create them with "
                         "`python -m d3llm_pipeline stage=trajectory`")
    fps = {info["fingerprint"] for info in infos}
    counts = {info["num_shards"] for info in infos}
    if len(fps) != 1 or len(counts) != 1:
        raise ChunkError(f"{out_dir} mixes shards of different runs (fingerprints {sorted(fps)}, shard counts "
                         f"{sorted(counts)}); remove the stale shard-* directories")
    num_shards, fp = counts.pop(), fps.pop()
    found = {info["shard"] for info in infos}
    missing = sorted(set(range(num_shards)) - found)
    if missing:
        raise ChunkError(f"{out_dir}: shards {missing} of {num_shards} have not run; run them with "
                         f"stage.num_shards={num_shards} stage.shard=<i>")
    parts = []
    for info in sorted(infos, key=lambda i: i["shard"]):
        layout = [tuple(ids) for ids in info["layout"]]
        parts.append(read_shard(shard_dir(out_dir, info["shard"], num_shards), fp, layout))
    merged = datasets.concatenate_datasets(parts)
    # Per-process temp dir (mkdtemp: never someone else's): parallel jobs (a distill sweep) may merge the same
    # shards at once; the first rename wins and the others discard their identical copy.
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".merged.", suffix=".tmp"))
    final = out_dir / "merged"
    try:
        merged.save_to_disk(str(tmp))
        info = {"fingerprint": fp, "rows": len(merged), "num_shards": num_shards}
        atomic_write_json(tmp / "merge.json", info)
        write_marker(tmp, "trajectories")
        try:
            current = json.loads((final / "merge.json").read_text())
        except (OSError, json.JSONDecodeError):
            current = None
        if current != info:  # a stale merge of ours (anything else there raises and stays)
            remove_ours(final, "trajectories", "stage.out_dir")
        with contextlib.suppress(OSError):  # another job's merge landed first (a non-empty dir stays)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))


def trajectories_fix(directory: str | Path) -> str:
    """How to repair an unreadable trajectory dataset (the finished chunks are kept and re-merged)."""
    merged = Path(directory) / "merged"
    return (f"delete {merged} and rerun `python -m d3llm_pipeline stage=trajectory` (it re-merges the finished "
            "chunks), or relabel everything with stage.overwrite=true")


def load_trajectories(out_dir: str | Path) -> datasets.Dataset:
    """The merged trajectory dataset of `out_dir` (merging the shards first if that has not happened)."""
    merged = Path(out_dir) / "merged"
    if (merged / "merge.json").is_file():
        return datasets.load_from_disk(str(merged))
    return merge_shards(out_dir)


def dataset_fingerprint(out_dir: str | Path) -> str | None:
    """The fingerprint of the trajectories in `out_dir` (merged or still in shards), without loading them."""
    out_dir = Path(out_dir)
    for info_file in [out_dir / "merged" / "merge.json", *sorted(out_dir.glob("shard-*/run.json"))]:
        try:
            return json.loads(info_file.read_text())["fingerprint"]
        except (OSError, json.JSONDecodeError, KeyError):
            continue
    return None
