"""Reading an official-format checkpoint dir without loading it: Hub ids, config.json, safetensors headers, memory.

Everything here only stats files and parses JSON headers, so a bad dir fails in milliseconds with one
PipelineError line that names the file and what is wrong, before any weight is read.

    path = resolve_model_path("GSAI-ML/LLaDA-8B-Instruct", "model.path")   # HF cache dir, or a one-line error
    path, config = check_official(family, path, "model.path")              # config.json matches the family
    tensors = tensor_index(path, "model.path")                             # name -> TensorInfo(file, shape)
    check_memory(path, n_params, "bfloat16", device)                       # fails early when it cannot fit
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d3llm_pipeline.errors import PipelineError, first_line
from d3llm_pipeline.models.families.base import DTYPE_BYTES, Family, registered

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as on huggingface.co
_MAX_HEADER = 100 * 2**20  # a safetensors header longer than this is garbage, not a header
HEADROOM = 1.1  # weights + 10% for activations, the logits of a step and the allocator
# The commands that make an artifact, named in the errors about a missing or broken one.
TEACHER_CMD = "python -m d3llm_pipeline stage=teacher"
DISTILL_CMD = "python -m d3llm_pipeline stage=distill"
TRAJECTORY_CMD = "python -m d3llm_pipeline stage=trajectory"


def looks_like_hub_id(text: str | Path) -> bool:
    """`owner/name` that is not a local path: what resolve_model_path treats as a Hub id."""
    return not Path(text).expanduser().exists() and bool(_HUB_ID.fullmatch(str(text)))


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def resolve_model_path(path: str | Path, key: str) -> Path:
    """A local dir as it is; an `owner/name` that is not a local path is a Hub id, resolved from the HF cache (or
    downloaded when the Hub is online). Other missing paths come back unchanged for the checks to report."""
    local = Path(path).expanduser()
    text = str(path)
    if not looks_like_hub_id(text):
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (huggingface_hub raises several types for that)
        pass
    if hub_offline():
        raise PipelineError(f"{key}={text} is a Hub id that is not in the local cache and the Hub is offline; "
                            f"download it (HF_HUB_OFFLINE=0 hf download {text}) or pass a local dir "
                            f"with {key}=<dir>")
    log.info("%s=%s: downloading from the Hugging Face Hub into the local cache", key, text)
    try:
        return Path(snapshot_download(text))
    except Exception as err:  # noqa: BLE001 - network / auth / unknown repo all end the same way
        raise PipelineError(f"cannot download {key}={text} from the Hub: {type(err).__name__}: {first_line(err)}; "
                            f"check the id or pass a local dir with {key}=<dir>") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def has_tokenizer_files(path: Path) -> bool:
    """Whether a checkpoint dir ships a tokenizer (the official fixtures, for one, ship none)."""
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def read_config(path: str | Path, key: str) -> tuple[Path, dict]:
    """(local dir, parsed config.json) or a one-line error."""
    path = resolve_model_path(path, key)
    file = path / "config.json"
    if not file.is_file():
        raise PipelineError(f"{key}={path} holds no checkpoint (no config.json); point {key} at a checkpoint dir "
                            "or a Hub id")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(f"{file} ({key}) is not valid JSON (truncated or corrupt: {first_line(err)}); "
                            "download the checkpoint again") from None
    if not isinstance(config, dict):
        raise PipelineError(f"{file} ({key}) is not a JSON object; download the checkpoint again")
    return path, config


def check_official(family: Family, path: str | Path, key: str) -> tuple[Path, dict]:
    """config.json belongs to `family` and every weight file has a sane header."""
    path, config = read_config(path, key)
    model_type = config.get("model_type")
    if not family.detect(config):
        owner = next((f for f in registered().values() if f.detect(config)), None)
        file = path / "config.json"
        if owner is None:
            known = ", ".join(f"{f.model_type} ({f.name})" for f in registered().values())
            raise PipelineError(f"{file} ({key}) has model_type {model_type!r}, which no model family loads natively "
                                f"(known: {known}); run its own code with model.backend=remote, or point {key} at "
                                "a LLaDA / Dream checkpoint")
        raise PipelineError(f"{file} ({key}) has model_type {model_type!r}, but model.family={family.name} loads "
                            f"model_type {family.model_type!r}; set model.family={owner.name} (or a "
                            f"{owner.name} model preset) or point {key} at a {family.display or family.name} "
                            "checkpoint")
    tensor_index(path, key)
    return path, config


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


def weight_files(path: Path, key: str) -> list[Path]:
    """The safetensors shards: those named by model.safetensors.index.json, else model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise PipelineError(f"{index} ({key}) is not a valid safetensors index ({first_line(err)}); download the "
                                "checkpoint again") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise PipelineError(f"{index} ({key}) names shard(s) {missing[:3]} that are not in {path}; the download "
                                "is incomplete, download the checkpoint again")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    other = sorted(p.name for p in path.glob("*.bin"))
    hint = f" (it holds {other[0]}: convert it to safetensors)" if other else ""
    raise PipelineError(f"{key}={path} holds a config.json but no safetensors weights (model.safetensors or "
                        f"model.safetensors.index.json){hint}; download the checkpoint again")


def safetensors_problem(file: Path) -> tuple[str | None, dict[str, TensorInfo]]:
    """(why `file` is not a complete safetensors file or None, its tensors from the JSON header): no data is read."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0:
            return f"{size} bytes, shorter than a safetensors header (truncated)", {}
        if length > min(size - 8, _MAX_HEADER):
            return f"its header claims {length} bytes but the file has {size} (truncated or not safetensors)", {}
        try:
            header = json.loads(handle.read(length))
            infos = {name: TensorInfo(file, tuple(int(d) for d in t["shape"]), str(t["dtype"]))
                     for name, t in header.items() if name != "__metadata__"}
            end = max((t["data_offsets"][1] for n, t in header.items() if n != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON (corrupt)", {}
    if 8 + length + end > size:
        return f"{size} bytes, but its header promises {8 + length + end} (truncated)", {}
    return None, infos


def read_header(file: Path, key: str) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file from its JSON header, checked against the file's size."""
    problem, infos = safetensors_problem(file)
    if problem:
        raise PipelineError(f"{file} ({key}) is unreadable: {problem}; download the checkpoint again")
    return infos


def tensor_index(path: Path, key: str) -> dict[str, TensorInfo]:
    """name -> TensorInfo over every shard (each header read once; no tensor data is touched)."""
    index: dict[str, TensorInfo] = {}
    for file in weight_files(path, key):
        index.update(read_header(file, key))
    return index


def available_bytes(device: Any) -> tuple[int | None, str]:
    """(free bytes, where that number comes from) on `device`; None where it cannot be known."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable on this machine (/proc/meminfo)"
    except (OSError, ValueError, IndexError):
        pass
    return None, "unknown"


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def check_memory(path: Path, n_params: int, dtype: str, device: Any, key: str = "model.path") -> int:
    """Log the estimate (parameters x dtype bytes) and fail with one line when it cannot fit; returns the bytes."""
    weights = n_params * DTYPE_BYTES[dtype]
    free, source = available_bytes(device)
    log.info("%s=%s: %.3f B parameters, about %s in %s; %s %s", key, path, n_params / 1e9, _gib(weights), dtype,
             "?" if free is None else _gib(free), source)
    if free is not None and weights * HEADROOM > free:
        raise PipelineError(f"{key}={path} needs about {_gib(weights * HEADROOM)} ({n_params / 1e9:.2f} B parameters "
                            f"in {dtype}, +10%) but only {_gib(free)} is {source}; use model.dtype=bfloat16, "
                            "another device=, or free memory")
    return weights


def model_cmd(path: str | Path) -> str:
    """The command that makes the checkpoint at `path`: a student is <student_dir>/merged (conf/model/student.yaml),
    made by stage=distill; anything else comes from stage=teacher."""
    return DISTILL_CMD if Path(path).name == "merged" else TEACHER_CMD
