"""Writing a natively loaded model back in its family's official on-disk format (the inverse of native.py).

A real-family checkpoint (LLaDA, Dream) loads into a stock transformers module with renamed parameters. Export
goes the other way, guided by the *source* checkpoint (the teacher / base the model was loaded from, or any
official dir of the same architecture): every tensor name the source holds is filled from the model's
parameter of the native name (`family.rename`), cast to the dtype the source stores it in, and written in the
source's shard layout (the same file names, the same index). config.json is copied byte for byte (every field
kept, so the official modeling code loads the result), and so are generation_config.json, tokenizer files and
the modeling code files when the source dir has them.

Loading bf16 weights into fp32 and casting back is exact, so exporting an unmodified load reproduces the source's
tensors bit for bit (tests/integration/test_export.py); a merged LoRA student differs only in the adapted projections.

    export_official(lm_or_module, get_family("llada"), source_dir, out_dir)   # -> out_dir
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from d3llm_pipeline import ownership
from d3llm_pipeline.errors import PipelineError
from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.families import checkpoint
from d3llm_pipeline.models.families.base import Family
from d3llm_pipeline.models.families.native import IGNORED_SUFFIXES

# safetensors header dtype -> torch dtype (the dtypes official checkpoints are stored in)
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
CONFIG_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Files copied as they are from the source dir when present (config.json always; weights are written anew).
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
          "chat_template.jinja")


def native_state(model: Any) -> Mapping[str, torch.Tensor]:
    """native name -> tensor of an adapter, a plain module, or a ready mapping (lora.MergedState)."""
    if isinstance(model, Mapping):
        return model
    module = model.model if isinstance(model, HFDiffusionAdapter) else model
    if hasattr(module, "peft_config"):
        raise ValueError("export needs a merged model: pass lora.MergedState(peft_model) or merge_and_unload() it")
    return module.state_dict()  # references, not copies (tied weights under both names)


def export_official(model: Any, family: Family, source: str | Path, out_dir: str | Path,
                    key: str = "stage.source_path", dtype: torch.dtype | None = None,
                    out_key: str = "stage.out_dir") -> Path:
    """Write `model` (adapter or module of `family`) to `out_dir` in the format of the official dir `source`.

    dtype None stores every tensor in config.json's `torch_dtype` (bf16 for released checkpoints), else in the
    dtype the source stores it in; a dtype overrides both (save_student keeps an fp32 student's LoRA deltas below
    bf16's resolution that way; config.json is still copied unchanged).

    Written into a temp dir next to out_dir and renamed into place, so a crash never leaves half a checkpoint; an
    existing out_dir is replaced only when it is an export of ours (ownership.py), never a user's checkpoint.
    """
    with ownership.staged(out_dir, "export", out_key) as tmp:
        write_official(model, family, source, tmp, key, dtype)
    return Path(out_dir)


def write_official(model: Any, family: Family, source: str | Path, dest: Path, key: str = "stage.source_path",
                   dtype: torch.dtype | None = None) -> None:
    """export_official's files, written into the existing empty dir `dest` (a temp dir the caller swaps in)."""
    source = Path(source)
    if family.rename is None:
        raise ValueError(f"model.family={family.name} has no official format to export to (it saves as HF)")
    source, config = checkpoint.check_official(family, source, key)
    state = native_state(model)
    dtype = dtype or CONFIG_DTYPES.get(config.get("torch_dtype"))
    plan = export_plan(family, source, state, key, dtype)
    _write_shards(plan, state, source, dest)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    for code in source.glob("*.py"):  # the official modeling code that config.json's auto_map names
        shutil.copy2(code, dest / code.name)
    if json.loads((dest / "config.json").read_text()) != config:  # copied, never re-serialised
        raise RuntimeError(f"config.json of {source} changed while exporting")


def export_plan(family: Family, source: Path, state: Mapping[str, torch.Tensor], key: str,
                dtype: torch.dtype | None) -> dict[str, list[tuple[str, str, torch.dtype]]]:
    """shard file name -> [(official name, native name, stored dtype)], every name and shape checked first."""
    plan: dict[str, list[tuple[str, str, torch.dtype]]] = {}
    for official, info in checkpoint.tensor_index(source, key).items():
        if official.endswith(IGNORED_SUFFIXES):
            continue  # recomputed on load; a native module holds no copy to write
        native = family.rename(official)
        if native not in state:
            raise PipelineError(f"cannot export to the format of {source} ({key}): the model has no parameter "
                                f"{native} for its tensor {official}; export from the checkpoint it was loaded from")
        # a lazy mapping (lora.MergedState) tells shapes without computing the merged tensor
        shape = tuple(state.shape_of(native) if hasattr(state, "shape_of") else state[native].shape)
        if shape != info.shape:
            raise PipelineError(f"cannot export to the format of {source} ({key}): {official} has shape "
                                f"{list(info.shape)} there but {list(shape)} in the model")
        stored = dtype or SAFETENSORS_DTYPES.get(info.dtype)
        if stored is None:
            raise PipelineError(f"{info.file} ({key}) stores {official} as {info.dtype}, which export does not write")
        plan.setdefault(info.file.name, []).append((official, native, stored))
    return plan


def _write_shards(plan: dict[str, list[tuple[str, str, torch.dtype]]], state: Mapping[str, torch.Tensor],
                  source: Path, out: Path) -> None:
    """One safetensors file per source shard (same names), one shard in CPU memory at a time; the index too."""
    from safetensors.torch import save_file

    total = 0
    for name, entries in plan.items():
        # contiguous CPU copies (safetensors refuses shared / strided storage)
        tensors = {official: state[native].detach().to("cpu", stored).contiguous().clone()
                   for official, native, stored in entries}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    index = source / "model.safetensors.index.json"
    if index.is_file():  # same weight map; total_size again in case the dtype changed
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        (out / index.name).write_text(json.dumps(data, indent=2) + "\n")


def export_model(lm: Any, family: Family, source: str | Path, out_dir: str | Path, tokenizer: Any = None,
                 key: str = "stage.source_path", dtype: torch.dtype | None = None,
                 out_key: str = "stage.out_dir") -> Path:
    """Official format for real families; the tiny family's format *is* an HF checkpoint (save_pretrained)."""
    if family.rename is not None:
        return export_official(lm, family, source, out_dir, key, dtype, out_key)
    from d3llm_pipeline.models.tiny import save_tiny_teacher

    with ownership.staged(out_dir, "export", out_key) as tmp:
        if dtype is not None:
            lm.model.to(dtype)
        save_tiny_teacher(lm, tokenizer, tmp)
    return Path(out_dir)
