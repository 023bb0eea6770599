"""The LoRA student: the teacher checkpoint + a PEFT adapter; saved as an adapter and as a merged checkpoint.

    student, tok = make_student(teacher_path, lora_cfg, dtype="bfloat16")   # HFDiffusionAdapter over a PeftModel
    save_student(student, tok, out_dir)       # out_dir/adapter (PEFT), out_dir/merged (the teacher's own format)
    lm, tok = load_model(out_dir / "merged", family)                        # stage=eval model=student loads it

The merged student is written in its teacher's format: an HF checkpoint for the tiny family, the official
on-disk format for LLaDA / Dream (families/export.py: official names, the teacher's config.json, bf16), so it
loads exactly like its teacher, in this pipeline and in the official code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.tiny import adapter_for, save_tiny_teacher


def _family_of(teacher_path: str | Path):
    """The teacher's family from its config.json (the default family when unreadable: its checks say why)."""
    from d3llm_pipeline.models.families import EMBEDDED_FAMILY, family_of, get_family

    return family_of(teacher_path) or get_family(EMBEDDED_FAMILY)


def make_student(teacher_path: str | Path, lora: Any, dtype: str = "float32", device: str = "cpu",
                 gradient_checkpointing: bool = False) -> tuple[HFDiffusionAdapter, object]:
    """(student adapter, tokenizer): teacher weights frozen (in `dtype`), LoRA matrices trainable.

    PEFT keeps the LoRA matrices in float32 over a bf16 base (autocast_adapter_dtype). Gradient checkpointing
    (non-reentrant: the frozen inputs need no requires_grad) trades a second forward per layer for activations.
    """
    from d3llm_pipeline.models.families.checkpoint import TEACHER_CMD

    family = _family_of(teacher_path)
    # checked and loaded with errors that name the file (a corrupt teacher is one line, not a traceback)
    teacher, tokenizer = family.load_checked(teacher_path, "stage.teacher_path", TEACHER_CMD, dtype=dtype,
                                             device=device)
    student = lora_student(teacher, family, lora, gradient_checkpointing, where=str(teacher_path))
    student.teacher_path = str(teacher_path)  # what save_student exports the merged student like
    return student, tokenizer


def lora_student(teacher: HFDiffusionAdapter, family, lora: Any, gradient_checkpointing: bool = False,
                 where: str = "the teacher") -> HFDiffusionAdapter:
    """A loaded teacher adapter (its model becomes the frozen base) wrapped with `lora`'s PEFT adapter: the
    student adapter (make_student's second half; benchmarks/distill_memory.py wraps random 8B-shaped models)."""
    targets = family.lora_targets_for(lora.target_modules)
    names = {name.rsplit(".", 1)[-1] for name, _ in teacher.model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        raise ConfigError(f"distill.lora.target_modules {missing} do not exist in {where}; "
                          f"this model has e.g. {sorted(n for n in names if n)[:12]}")
    if gradient_checkpointing:
        teacher.model.activation_checkpointing_enable({"use_reentrant": False})  # (transformers' new name)
    config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        fan_in_fan_out=family.lora_fan_in_fan_out,  # only GPT-2's Conv1D stores (in, out) matrices
        bias="none",
    )
    peft_model = get_peft_model(teacher.model, config)
    return HFDiffusionAdapter(peft_model, teacher.mask_token_id, teacher.eos_token_id, teacher.pad_token_id,
                              teacher.shift_logits, teacher.eot_token_id, teacher.decode_defaults)


class MergedState(Mapping):
    """native name -> merged tensor of a LoRA model, computed one tensor at a time (never a second model copy).

    A LoRA-adapted `<module>.weight` is base + B A * scale (PEFT's own delta, as merge_and_unload adds it);
    every other name is the base model's tensor.
    """

    def __init__(self, peft_model: PeftModel):
        base = peft_model.get_base_model()
        self.lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        # state_dict() holds references, not copies; an adapted layer's weight is under `.base_layer.`
        self.plain = {n.replace(".base_layer.", "."): t for n, t in base.state_dict().items() if ".lora_" not in n}

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.plain[name]
        module_name, _, attr = name.rpartition(".")
        layer = self.lora.get(module_name)
        if layer is None or attr != "weight":
            return tensor
        with torch.no_grad():
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            return tensor + delta.to(tensor.dtype)

    def shape_of(self, name: str) -> torch.Size:
        return self.plain[name].shape  # a merged weight has its base weight's shape

    def __iter__(self) -> Iterator[str]:
        return iter(self.plain)

    def __len__(self) -> int:
        return len(self.plain)


def save_student(student: HFDiffusionAdapter, tokenizer, out_dir: str | Path,
                 teacher_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write `adapter/` (PEFT format) and `merged/` (the teacher's format), each via a temp dir + rename, replacing
    only a student of ours (ownership.py)."""
    from d3llm_pipeline import ownership

    out_dir = Path(out_dir)
    peft_model: PeftModel = student.model
    teacher_path = teacher_path or getattr(student, "teacher_path", None)
    family = _family_of(teacher_path) if teacher_path else None
    adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"

    def write_merged(tmp: Path) -> None:
        if family is not None and family.rename is not None:  # LLaDA / Dream: the official format
            from d3llm_pipeline.models.families.export import write_official

            # in the training dtype: a bf16 cast would drop LoRA deltas below bf16's resolution of an fp32 run
            # (stage=export writes the released dtype)
            dtype = next(peft_model.get_base_model().parameters()).dtype
            write_official(MergedState(peft_model), family, teacher_path, tmp, key="stage.teacher_path",
                           dtype=dtype)
        else:
            save_tiny_teacher(adapter_for(copy.deepcopy(peft_model).merge_and_unload(), tokenizer), tokenizer, tmp)

    ownership.claim(out_dir, "student", "stage.out_dir")
    for final, write in ((adapter_dir, lambda tmp: peft_model.save_pretrained(tmp)), (merged_dir, write_merged)):
        with ownership.staged(final, "student", "stage.out_dir") as tmp:
            write(tmp)
    return adapter_dir, merged_dir


def load_student_adapter(teacher_path: str | Path, adapter_dir: str | Path, dtype: str = "float32",
                         device: str = "cpu") -> HFDiffusionAdapter:
    """The teacher (any family) with a saved PEFT adapter applied (unmerged): a reload check, or export's input."""
    from d3llm_pipeline.models.families.checkpoint import TEACHER_CMD

    teacher, _ = _family_of(teacher_path).load_checked(teacher_path, "stage.teacher_path", TEACHER_CMD,
                                                       dtype=dtype, device=device)
    peft_model = PeftModel.from_pretrained(teacher.model, str(adapter_dir))
    return HFDiffusionAdapter(peft_model.eval(), teacher.mask_token_id, teacher.eos_token_id,
                              teacher.pad_token_id, teacher.shift_logits, teacher.eot_token_id,
                              decode_defaults=teacher.decode_defaults)
