"""stage=trajectory_import: convert d3LLM's published trajectory datasets into ours (no regeneration).

    python -m d3llm_pipeline stage=trajectory_import stage.source=/data/trajectory_data_llada_32
    HF_HUB_OFFLINE=0 python -m d3llm_pipeline stage=trajectory_import stage.source=d3LLM/trajectory_data_llada_32

Writes `<stage.out_dir>/merged` in the same format `stage=trajectory` produces, so the distill stage reads
either. Each row is checked to be a real reveal order (see trajectories.d3llm_format).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from d3llm_pipeline import ownership
from d3llm_pipeline.artifacts import fingerprint
from d3llm_pipeline.config.schema import load_section
from d3llm_pipeline.config.stage_schemas import TrajectoryImportStageConfig
from d3llm_pipeline.errors import ConfigError, PipelineError, first_line
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.checks import require_writable
from d3llm_pipeline.trajectories.d3llm_format import convert_d3llm_dataset

log = logging.getLogger(__name__)


def load_source(source: str, split: str) -> datasets.Dataset:
    """A local `save_to_disk` dir, a dir of parquet files, or (online only) a Hub dataset id."""
    path = Path(source)
    if path.is_dir():
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
            files = sorted(str(p) for p in path.rglob("*.parquet"))
            return datasets.Dataset.from_parquet(files)
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ConfigError(f"stage.source={source} is not a local directory and the Hub is offline; download it "
                          "first (HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to allow) or point stage.source at a copy")
    return datasets.load_dataset(source, split=split)


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, TrajectoryImportStageConfig, "stage")
    require_writable(stage.out_dir, "stage.out_dir")
    ownership.check_ours(stage.out_dir, "trajectories", "stage.out_dir")
    if stage.mask_token_id is None:
        raise ConfigError(f"stage.mask_token_id: model.family={cfg.model.family} has no published d3LLM trajectories; "
                          "import for a real model (model=llada_8b_instruct | dream_7b_instruct) or set "
                          "stage.mask_token_id=<the data's MASK id>")
    try:
        source = load_source(stage.source, stage.split)
        if stage.limit is not None:
            source = source.select(range(min(stage.limit, len(source))))
        converted = convert_d3llm_dataset(source, mask_token_id=stage.mask_token_id)
    except PipelineError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets / pyarrow / format errors: the source is not what we need
        raise PipelineError(f"stage.source={stage.source} is not a readable d3LLM trajectory dataset "
                            f"({type(err).__name__}: {first_line(err)}); point it at a save_to_disk or parquet "
                            "copy of d3LLM/trajectory_data_*") from err
    out = ownership.claim(stage.out_dir, "trajectories", "stage.out_dir")
    fp = fingerprint({"imported": stage.source, "split": stage.split, "limit": stage.limit,
                      "mask_token_id": stage.mask_token_id})
    with ownership.staged(out / "merged", "trajectories", "stage.out_dir") as tmp:
        converted.save_to_disk(str(tmp))
        atomic_write_json(tmp / "merge.json", {"fingerprint": fp, "rows": len(converted), "source": stage.source})
    summary = {"stage": "trajectory_import", "source": stage.source, "rows": len(converted),
               "out_dir": str(out), "correct_fraction": sum(converted["is_correct"]) / max(1, len(converted))}
    atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
    log.info("imported %d d3LLM trajectories from %s -> %s", len(converted), stage.source, out / "merged")
    return summary
