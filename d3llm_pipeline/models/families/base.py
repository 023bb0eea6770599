"""What a model family is: the one place a dLLM family's quirks (ids, logit alignment, names, loader) live.

A family module (tiny.py, llada.py, dream.py) builds one `Family` subclass instance (tiny.py's `TinyFamily`, the
official-format `OfficialFamily` of official.py); the registry in `families/__init__.py` looks them up by
`model.family` or by a checkpoint's config.json `model_type`. Code outside the family modules asks a `Family` for
what it needs and never tests a family's name. Nothing here imports another module of the package.

    fam = get_family("llada")
    ids = fam.special_ids(config_json)        # SpecialIds(mask=126336, eos=126081, pad=126081, eot=126348)
    path, config = fam.check(path, "model.path", make_cmd)    # one-line PipelineError when the dir is unusable
    lm, tok = fam.load(path, dtype="bfloat16", device="cuda")  # HFDiffusionAdapter, tokenizer or None
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d3llm_pipeline.decoding.spec import DecodeDefaults
from d3llm_pipeline.errors import PipelineError, first_line

# distill.lora.target_modules' default (the schema reads it from here): the tiny family's GPT-2 projections. A
# family given this default adapts its own `lora_targets` instead.
DEFAULT_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
_REGISTERED: dict[str, Family] = {}  # name -> family, filled as family modules build theirs (registered())
# model.dtype -> torch dtype name (resolved lazily so that importing a family stays free of torch)
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the decoders and losses need. eot ends a chat turn (LLaDA <|eot_id|>, Dream <|im_end|>)."""

    mask: int
    eos: int
    pad: int
    eot: int | None = None


def _first_id(value: Any) -> int | None:
    """config.json ids may be an int or a list of ints (several EOS ids); the first one is the canonical one."""
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Family:
    """One dLLM family. Real families (LLaDA, Dream) load natively through `build_config` + `rename`."""

    name: str  # the model.family value
    model_type: str  # the config.json model_type this family loads
    shift_logits: bool  # True: output i predicts token i+1 (Dream); the adapter realigns it
    lora_targets: tuple[str, ...]  # module names (after loading) LoRA adapts by default
    defaults: SpecialIds  # used where config.json does not say
    display: str = ""  # how users call it in messages ("LLaDA", "Dream")
    lora_fan_in_fan_out: bool = False  # True only for GPT-2's Conv1D (in, out) weight layout
    # config.json (dict) -> a transformers config of a native module with bidirectional attention
    build_config: Callable[[dict], Any] | None = None
    # official parameter name -> native parameter name (None: the tensor has no place in the native module)
    rename: Callable[[str], str | None] | None = None
    official_name: Callable[[str], str] | None = None  # the inverse of rename, for error messages
    # config.json -> the longest sequence the model was built for (None: no limit known)
    positions: Callable[[dict], int | None] | None = None
    decode_defaults: DecodeDefaults = DecodeDefaults()  # handed to the adapter (lm.decode_defaults)
    # The released checkpoint's config.json fields that set its shapes (families/shapes.py builds an 8B-shaped model
    # from them, without weights), and their names for (layers, hidden, heads, kv heads, MLP, (vocab, ...)).
    released_config: dict[str, Any] | None = field(default=None, compare=False)
    shape_fields: tuple | None = None
    # The official tokenizer's strings for the special ids {"mask", "eos", "eot"} (fixture_tokenizer.py writes them)
    special_tokens: dict[str, str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _REGISTERED[self.name] = self

    def lora_targets_for(self, configured: list[str] | tuple[str, ...]) -> list[str]:
        """distill.lora.target_modules as configured, or this family's own names when it is the default
        (DEFAULT_LORA_TARGETS: the tiny teacher's GPT-2 names, which a LLaDA / Dream model does not have)."""
        return list(self.lora_targets) if tuple(configured) == DEFAULT_LORA_TARGETS else list(configured)

    def detect(self, config: dict) -> bool:
        """Whether a checkpoint's config.json (as a dict) belongs to this family."""
        return isinstance(config, dict) and config.get("model_type") == self.model_type

    def special_ids(self, config: dict) -> SpecialIds:
        """MASK / EOS / PAD from config.json where present (they are in both official configs); defaults otherwise."""
        d = self.defaults
        eos = _first_id(config.get("eos_token_id"))
        pad = _first_id(config.get("pad_token_id"))
        mask = _first_id(config.get("mask_token_id"))
        return SpecialIds(mask=d.mask if mask is None else mask, eos=d.eos if eos is None else eos,
                          pad=d.pad if pad is None else pad, eot=d.eot)

    def max_positions(self, config: dict) -> int | None:
        return self.positions(config) if self.positions else None

    def check(self, path: str | Path, key: str, make_cmd: str, backend: str = "native") -> tuple[Path, dict]:
        """(local dir, config.json) of a usable checkpoint of this family (one PipelineError line when it is not);
        `make_cmd` is the command that makes one, named in the error where the pipeline can."""
        raise NotImplementedError

    def load(self, path: str | Path, dtype: str = "float32", device: Any = "cpu", attn_implementation: str = "sdpa",
             backend: str = "native", key: str = "model.path"):
        """(DiffusionLM adapter, tokenizer or None) of a checked local checkpoint dir (`key` names it in errors)."""
        raise NotImplementedError

    def load_checked(self, path: str | Path, key: str, make_cmd: str, dtype: str = "float32", device: Any = "cpu",
                     attn_implementation: str = "sdpa", backend: str = "native"):
        """`check` then `load`; anything the loaders raise becomes one PipelineError line naming the dir."""
        local, _ = self.check(path, key, make_cmd, backend)
        fix = (f"download the checkpoint again or point {key} at another {self.display or self.name} checkpoint dir"
               if backend == "native" else "model.backend=remote needs the modeling code files that config.json's "
               "auto_map names, in the checkpoint dir; LLaDA / Dream checkpoints load with model.backend=native")
        return one_line_errors(lambda: self.load(local, dtype, device, attn_implementation, backend, key), local,
                               key, fix)


def registered() -> dict[str, Family]:
    """Every family built so far, by name (each family module's FAMILY registers itself when it is constructed;
    the registry, families/__init__.py, imports them all). Read here by modules below the registry."""
    return dict(_REGISTERED)


def one_line_errors(load: Callable[[], Any], path: Path, key: str, fix: str) -> Any:
    """Run `load`; any error but a PipelineError becomes one line naming the dir (transformers, safetensors...)."""
    try:
        return load()
    except PipelineError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader error means "these files cannot be used"
        raise PipelineError(f"cannot load the checkpoint {key}={path}: {type(err).__name__}: {first_line(err)}; "
                            f"{fix}") from err
