"""Distill stage on a random tiny teacher: LoRA-only updates, adapter save/reload, exact resume, curricula, DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import compose_at

from d3llm_pipeline.config.schema import LoraConfig
from d3llm_pipeline.models.lora import load_student_adapter, make_student
from d3llm_pipeline.models.tiny import load_tiny_teacher
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.training.distill_module import DistillModule


@pytest.fixture(scope="module")
def workspace(distill_workspace) -> Path:
    return distill_workspace


def distill_overrides(root: Path, out: str, *extra: str) -> list[str]:
    return ["stage=distill", "distill.only_correct=false", "distill.lora.r=4", "stage.batch_size=8",
            "stage.epochs=2", "stage.val_every=1000", "stage.val_problems=4", "task.n_val=4",
            "stage.checkpoint_every=2", "trainer.log_every_n_steps=1", f"stage.out_dir={root / out}",
            f"+output_dir={root / ('run_' + out)}", *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in read_csv(run_dir / "csv" / "metrics.csv")
            if r.get("train/loss")}


def test_student_starts_as_the_teacher_and_only_lora_is_trainable(workspace):
    teacher, _ = load_tiny_teacher(workspace / "outputs" / "artifacts" / "teacher")
    student, _ = make_student(workspace / "outputs" / "artifacts" / "teacher", LoraConfig(r=4))
    ids = torch.randint(4, 44, (2, 88), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # LoRA B matrices start at zero: the student is exactly the teacher
        assert torch.allclose(student.logits(ids), teacher.logits(ids), atol=1e-6)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.fixture(scope="module")
def uninterrupted(workspace) -> dict:
    summary = call_stage(compose_at(workspace, *distill_overrides(workspace, "student")))
    return summary


def test_distill_trains_lora_only_and_writes_adapter_and_merged(workspace, uninterrupted):
    teacher, _ = load_tiny_teacher(workspace / "outputs" / "artifacts" / "teacher")
    merged, _ = load_tiny_teacher(workspace / "student" / "merged")
    adapter = load_student_adapter(workspace / "outputs" / "artifacts" / "teacher", workspace / "student" / "adapter")
    base = dict(teacher.model.named_parameters())
    for name, param in adapter.model.base_model.model.named_parameters():
        if "lora_" not in name and name.replace(".base_layer", "") in base:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), f"{name} changed"
    lora_b = [p for n, p in adapter.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter really moved
    ids = torch.randint(4, 44, (3, 88), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reloaded, merged_logits, teacher_logits = adapter.logits(ids), merged.logits(ids), teacher.logits(ids)
    assert torch.allclose(reloaded, merged_logits, atol=1e-5)  # merged == base + adapter
    assert not torch.allclose(reloaded, teacher_logits, atol=1e-4)
    assert uninterrupted["steps"] == 2 * (48 // 8)


def test_curricula_are_logged_and_move(workspace, uninterrupted):
    rows = [r for r in read_csv(workspace / "run_student" / "csv" / "metrics.csv") if r.get("curriculum/window")]
    ratio = [float(r["curriculum/mask_ratio"]) for r in rows]
    window = [float(r["curriculum/window"]) for r in rows]
    assert ratio[0] == 0.0 and ratio[-1] > 0.6 and ratio == sorted(ratio)
    assert window[0] == 8 and window[-1] == 16 and window == sorted(window)  # distill/tiny: [8,8,12,12,16,16]


def crash_distillation(monkeypatch, workspace, name: str, at_step: int = 5, extra: tuple[str, ...] = ()) -> None:
    """Run distillation `name` until it crashes at step `at_step` (its last checkpoint stays), then un-break it."""
    original = DistillModule.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == at_step:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        call_stage(compose_at(workspace, *distill_overrides(workspace, name, *extra)))
    monkeypatch.setattr(DistillModule, "training_step", original)


def test_resumed_run_equals_uninterrupted(workspace, uninterrupted, monkeypatch):
    crash_distillation(monkeypatch, workspace, "resumed")
    assert (workspace / "resumed.lightning" / "last.ckpt").is_file()
    overrides = distill_overrides(workspace, "resumed")
    overrides[-1] = f"+output_dir={workspace / 'run_resumed2'}"
    summary = call_stage(compose_at(workspace, *overrides))
    assert summary["resumed"] is True
    first, second = losses_by_step(workspace / "run_resumed"), losses_by_step(workspace / "run_resumed2")
    full = losses_by_step(workspace / "run_student")
    assert min(second) == 4  # resumed after the step-4 checkpoint (steps are 0-based in the log)
    for step, loss in {**first, **second}.items():
        assert loss == pytest.approx(full[step], abs=1e-6), step
    a, _ = load_tiny_teacher(workspace / "resumed" / "merged")
    b, _ = load_tiny_teacher(workspace / "student" / "merged")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_ddp_spawn_on_two_cpu_processes(workspace):
    summary = call_stage(compose_at(workspace, *distill_overrides(workspace, "ddp", "+trainer.strategy=ddp_spawn",
                                                                  "trainer.devices=2", "stage.epochs=1")))
    assert summary["steps"] == 48 // 8  # stage.batch_size is the global batch: the one-device step count
    assert (workspace / "ddp" / "merged" / "model.safetensors").is_file()
    # the workers' training came back to the process that saved: the merged student is not the teacher
    teacher, _ = load_tiny_teacher(workspace / "outputs" / "artifacts" / "teacher")
    merged, _ = load_tiny_teacher(workspace / "ddp" / "merged")
    assert any(not torch.equal(a, b) for a, b in zip(teacher.model.parameters(), merged.model.parameters(),
                                                     strict=True))


def test_step_batches_split_the_global_batch_over_ranks():
    from d3llm_pipeline.errors import ConfigError
    from d3llm_pipeline.training.distill_data import StepBatches

    tensors = {"targets": torch.arange(48)[:, None]}
    one = StepBatches(tensors, batch_size=8, seed=3, start_step=0, max_steps=12)
    two = [StepBatches(tensors, 8, 3, 0, 12, rank=r, world_size=2) for r in range(2)]
    four = [StepBatches(tensors, 8, 3, 0, 12, rank=r, world_size=4) for r in range(4)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == four[0].steps_per_epoch == 6
    for step in range(12):  # the ranks' shares, in rank order, are exactly the one-device batch of the step
        expected = one.batch_indices(step).tolist()
        assert [i for b in two for i in b.batch_indices(step).tolist()] == expected
        assert [i for b in four for i in b.batch_indices(step).tolist()] == expected
    with pytest.raises(ConfigError, match="multiple of the 3 devices"):
        StepBatches(tensors, 8, 3, 0, 12, rank=0, world_size=3)
