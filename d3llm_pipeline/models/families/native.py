"""Native loading: an official-format checkpoint into stock transformers modules, lazily, shard by shard.

No remote code runs. The family translates config.json into a transformers config (Llama for LLaDA, Qwen2 for
Dream) with `is_causal=False`: transformers then builds bidirectional masks, and passes is_causal=False to SDPA /
eager attention (`merge_with_config_defaults`), so every position attends to every other (a dLLM denoiser).

Memory: the module is built on the meta device (no storage), every tensor name and shape is checked against the
safetensors headers, the size is estimated and checked against free memory, and only then is each shard opened
with `safe_open` and each tensor read, cast to model.dtype, moved to the device and assigned: peak memory is the
model plus one tensor, never twice an 8B checkpoint.

    lm, tok = load_native(get_family("llada"), Path(dir), dtype="float32", device="cpu", attn_implementation="sdpa")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from d3llm_pipeline.errors import PipelineError
from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.families import checkpoint
from d3llm_pipeline.models.families.base import Family, torch_dtype

log = logging.getLogger(__name__)

# Tensors some exporters write that hold nothing a native module loads (RoPE tables are recomputed).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def meta_model(hf_config: Any, attn_implementation: str) -> torch.nn.Module:
    """The native module with every parameter on the meta device (no storage, no random init cost)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)


def load_plan(family: Family, path: Path, model: torch.nn.Module, key: str = "model.path"
              ) -> dict[str, tuple[str, checkpoint.TensorInfo]]:
    """native parameter name -> (official name, where it is), with every name and shape checked first.

    One line per problem: a tensor the checkpoint lacks, a tensor it has that this family does not, a shape
    that does not match config.json.
    """
    params = dict(model.named_parameters())  # tied weights appear once
    index = checkpoint.tensor_index(path, key)
    plan: dict[str, tuple[str, checkpoint.TensorInfo]] = {}
    where = path / "model.safetensors.index.json"
    where = where if where.is_file() else path / "model.safetensors"
    for name, info in index.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        native = family.rename(name) if family.rename else name
        if native is None or native not in params:
            raise PipelineError(f"{info.file} ({key}) holds the tensor {name}, which a {family.display} checkpoint "
                                f"does not have (model_type {family.model_type}); point {key} at an unmodified "
                                f"{family.display} checkpoint")
        if tuple(params[native].shape) != info.shape:
            raise PipelineError(f"{info.file} ({key}): the tensor {name} has shape {list(info.shape)}, but "
                                f"{path / 'config.json'} implies {list(params[native].shape)}; the weights do not "
                                "belong to this config.json (download the checkpoint again)")
        plan[native] = (name, info)
    missing = [n for n in params if n not in plan]
    if missing:
        names = [family.official_name(n) if family.official_name else n for n in missing]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise PipelineError(f"{where} ({key}) lacks the tensor(s) {', '.join(names[:3])}{more} that "
                            f"{path / 'config.json'} requires; the checkpoint is incomplete (download it again)")
    return plan


def assign_weights(model: torch.nn.Module, plan: dict[str, tuple[str, checkpoint.TensorInfo]], dtype: torch.dtype,
                   device: torch.device) -> None:
    """Read every tensor once, shard by shard, cast it and put it in place of its meta parameter."""
    from safetensors import safe_open

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for native, (official, info) in plan.items():
        by_file.setdefault(info.file, []).append((native, official))
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as shard:
            for native, official in names:
                tensor = shard.get_tensor(official).to(device=device, dtype=dtype)
                module_name, _, attr = native.rpartition(".")
                module = model.get_submodule(module_name)
                module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
                del tensor


def rebuild_buffers(model: torch.nn.Module, device: torch.device, every: bool = False) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) were made on meta: compute them again on the device.

    every=True rebuilds every module that owns buffers, meta or not: after `to_empty` they are no longer meta but
    hold uninitialised memory (garbage, NaN on some machines)."""
    for name, module in list(model.named_modules()):
        own = list(module.buffers(recurse=False))
        if own and (every or any(b.is_meta for b in own)):
            if not hasattr(module, "config"):
                raise RuntimeError(f"cannot rebuild the meta buffers of {name} ({type(module).__name__})")
            parent_name, _, attr = name.rpartition(".")
            with torch.device(device):  # RoPE tables are computed in float32 whatever model.dtype is
                setattr(model.get_submodule(parent_name), attr, type(module)(config=module.config))
    still = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still:
        raise RuntimeError(f"tensors left on the meta device after loading: {still[:3]}")


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer if the dir has one (no remote code), else None (the official fixtures ship none)."""
    if not checkpoint.has_tokenizer_files(path):
        log.info("%s holds no tokenizer files: loading the model without a tokenizer", path)
        return None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        # trust_remote_code=False: config.json's auto_map must not prompt (or run code) for a tokenizer
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - e.g. a tokenizer class that only exists in remote code
        if (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        log.warning("the tokenizer in %s needs code this pipeline does not run (%s); continuing without one",
                    path, checkpoint.first_line(err))
        return None


def load_native(family: Family, path: Path, dtype: str = "float32", device: Any = "cpu",
                attn_implementation: str = "sdpa", key: str = "model.path") -> tuple[HFDiffusionAdapter, Any]:
    """(adapter, tokenizer or None) of a checked local checkpoint dir, in `dtype` on `device`."""
    config = json.loads((path / "config.json").read_text())
    device = torch.device(device)
    model = meta_model(family.build_config(config), attn_implementation)
    plan = load_plan(family, path, model, key)
    checkpoint.check_memory(path, sum(info.numel for _, info in plan.values()), dtype, device, key)
    assign_weights(model, plan, torch_dtype(dtype), device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    rebuild_buffers(model, device)
    model.eval()
    ids = family.special_ids(config)
    lm = HFDiffusionAdapter(model, ids.mask, ids.eos, ids.pad, family.shift_logits, eot_token_id=ids.eot,
                            decode_defaults=family.decode_defaults)
    return lm, load_tokenizer(path)
