"""The LoRA student: the teacher checkpoint + a PEFT adapter; saved as an adapter and as a merged HF checkpoint.

    student = make_student(teacher_path, lora_cfg)            # HFDiffusionAdapter over a PeftModel
    save_student(student, tokenizer, out_dir)                 # out_dir/adapter (PEFT), out_dir/merged (HF)
    lm, tok = load_tiny_teacher(out_dir / "merged")           # stage=eval model=student loads it like this
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from d3llm_pipeline.config.schema import ConfigError, LoraConfig
from d3llm_pipeline.models.adapter import HFDiffusionAdapter
from d3llm_pipeline.models.tiny import adapter_for, load_tiny_teacher, save_tiny_teacher


def make_student(teacher_path: str | Path, lora: LoraConfig) -> tuple[HFDiffusionAdapter, object]:
    """(student adapter, tokenizer): teacher weights frozen, LoRA matrices on `lora.target_modules` trainable."""
    from d3llm_pipeline.config.schema import ModelConfig
    from d3llm_pipeline.models.families import family_of, get_family
    from d3llm_pipeline.stages.checks import TEACHER_CMD

    # The teacher's family from its config.json (the default family when unreadable: its checks say what is wrong);
    # checked and loaded with errors that name the file (a corrupt teacher is one line, not a traceback).
    family = family_of(teacher_path) or get_family(ModelConfig().family)
    teacher, tokenizer = family.load_checked(teacher_path, "stage.teacher_path", TEACHER_CMD)
    targets = list(lora.target_modules)
    if targets == LoraConfig().target_modules:  # left at the schema default: the family's own preset names
        targets = list(family.lora_targets)
    names = {name.rsplit(".", 1)[-1] for name, _ in teacher.model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:
        raise ConfigError(f"distill.lora.target_modules {missing} do not exist in {teacher_path}; "
                          f"this model has e.g. {sorted(n for n in names if n)[:12]}")
    config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        fan_in_fan_out=family.lora_fan_in_fan_out,  # only GPT-2's Conv1D stores (in, out) matrices
        bias="none",
    )
    peft_model = get_peft_model(teacher.model, config)
    student = HFDiffusionAdapter(peft_model, teacher.mask_token_id, teacher.eos_token_id, teacher.pad_token_id,
                                 teacher.shift_logits, teacher.eot_token_id, teacher.decode_defaults)
    return student, tokenizer


def save_student(student: HFDiffusionAdapter, tokenizer, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `adapter/` (PEFT format) and `merged/` (plain HF checkpoint), each via a temp dir + rename."""
    out_dir = Path(out_dir)
    peft_model: PeftModel = student.model
    adapter_dir, merged_dir = out_dir / "adapter", out_dir / "merged"
    for final, write in (
        (adapter_dir, lambda tmp: peft_model.save_pretrained(tmp)),
        (merged_dir, lambda tmp: save_tiny_teacher(
            adapter_for(copy.deepcopy(peft_model).merge_and_unload(), tokenizer), tokenizer, tmp)),
    ):
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return adapter_dir, merged_dir


def load_student_adapter(teacher_path: str | Path, adapter_dir: str | Path) -> HFDiffusionAdapter:
    """The teacher with a saved PEFT adapter applied (unmerged), for checking a reload gives the same logits."""
    teacher, _ = load_tiny_teacher(teacher_path)
    peft_model = PeftModel.from_pretrained(teacher.model, str(adapter_dir))
    return HFDiffusionAdapter(peft_model.eval(), teacher.mask_token_id, teacher.eos_token_id,
                              teacher.pad_token_id, teacher.shift_logits, decode_defaults=teacher.decode_defaults)
