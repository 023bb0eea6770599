"""stage=export: write a checkpoint back in its family's official on-disk format (families/export.py).

    python -m d3llm_pipeline stage=export model=d3llm_llada model.path=<student>/merged \
        stage.source_path=GSAI-ML/LLaDA-8B-Instruct              # the merged student, bf16, teacher's config.json
    python -m d3llm_pipeline stage=export model=llada_8b_instruct stage.adapter=<student>/adapter   # merge + export

The checkpoint at `stage.model_path` is loaded natively (model.family, model.dtype, on the CPU: export needs no
accelerator), a PEFT adapter is merged onto it when `stage.adapter` is set, and the result is written to
`stage.out_dir` with the official parameter names, `stage.source_path`'s config.json (copied byte for byte),
generation config, tokenizer and code files, in config.json's torch_dtype (or `stage.dtype`). The tiny family's
official format is the HF checkpoint it already is (save_pretrained).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline import ownership
from d3llm_pipeline.config.schema import ModelConfig, load_section
from d3llm_pipeline.config.stage_schemas import ExportStageConfig
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.models.families import family_of, get_family
from d3llm_pipeline.models.families.base import torch_dtype
from d3llm_pipeline.models.families.export import export_model
from d3llm_pipeline.stages import output_dir_of
from d3llm_pipeline.stages.checks import model_cmd, require_writable
from d3llm_pipeline.stages.common import setup_run

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    stage = load_section(cfg.stage, ExportStageConfig, "stage")
    model = load_section(cfg.model, ModelConfig, "model")
    setup_run(cfg)
    require_writable(stage.out_dir, "stage.out_dir")
    ownership.check_ours(stage.out_dir, "export", "stage.out_dir")  # before the (long) load
    # the checkpoint's own family when its config.json says (a student dir of a real family), else model.family
    family = family_of(stage.model_path) or get_family(model.family)
    lm, tokenizer = family.load_checked(stage.model_path, "stage.model_path", model_cmd(stage.model_path),
                                        dtype=model.dtype, device="cpu")
    weights: Any = lm
    if stage.adapter:
        from peft import PeftModel

        from d3llm_pipeline.models.lora import MergedState

        # merged tensor by tensor while writing (no second copy of the model); tiny: merge_and_unload
        peft_model = PeftModel.from_pretrained(lm.model, stage.adapter)
        if family.rename is None:
            lm.model = peft_model.merge_and_unload()
        else:
            weights = MergedState(peft_model)
    source = stage.source_path or stage.model_path
    dtype = torch_dtype(stage.dtype) if stage.dtype else None
    out = export_model(weights, family, source, stage.out_dir, tokenizer, key="stage.source_path", dtype=dtype)
    summary = {"stage": "export", "family": family.name, "model_path": str(stage.model_path),
               "adapter": stage.adapter, "source_path": str(source), "out_dir": str(out),
               "files": sorted(p.name for p in Path(out).iterdir())}
    atomic_write_json(Path(output_dir_of(cfg)) / "metrics.json", summary)
    log.info("export: %s (%s%s) -> %s", stage.model_path, family.name,
             f" + adapter {stage.adapter}" if stage.adapter else "", out)
    return summary
