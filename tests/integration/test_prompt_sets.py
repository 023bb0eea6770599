"""Real prompt sets for trajectories (issue 10, item 6): d3LLM's answer check, left-padded prompts kept out of
attention in labelling and in the distillation loss, and stage=trajectory -> stage=distill on a local prompt file
with the official-format LLaDA fixture as teacher.

Run: .venv/bin/python -m pytest tests/integration/test_prompt_sets.py -q
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import OFFICIAL, run_cli
from test_distill_rows import tiny_teacher
from test_student_families import random_batch

from d3llm_pipeline.config.schema import DistillConfig, LoraConfig
from d3llm_pipeline.models.lora import make_student
from d3llm_pipeline.objectives.distill_masking import apply_masks
from d3llm_pipeline.tasks.prompt_sets import (
    encode_prompts,
    grade_answer,
    last_boxed,
    normalise,
    prompt_attention,
)
from d3llm_pipeline.training.distill_module import DistillModule


@pytest.mark.parametrize(("text", "boxed"), [
    ("so x = \\boxed{12}.", "12"),
    ("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the LAST one, braces matched
    ("\\boxed{\\{1, 2\\}} done", "\\{1, 2\\}"),
    ("no answer", None),
    ("cut off \\boxed{3", None),
])
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_grades_as_method_md_1_3():
    assert normalise(" 1,000 \n") == "1000" and normalise("X + 1") == "x+1"
    assert grade_answer("... \\boxed{1,000}", "1000", "boxed") == ("1,000", True)
    assert grade_answer("... \\boxed{ 1/2 }", "so \\boxed{1/2}", "boxed") == (" 1/2 ", True)  # boxed gold
    assert grade_answer("... \\boxed{3}", "4", "boxed") == ("3", False)
    assert grade_answer("no box: 4", "4", "boxed") == (None, False)
    assert grade_answer("def f(): pass", "", "boxed") == (None, True)  # empty gt (code prompts): kept
    assert grade_answer("so 3 + 4 = 7 apples", "3 + 4 = 7\n#### 7", "gsm8k") == ("7", True)
    assert grade_answer("\\boxed{7} and then 9", "#### 7", "gsm8k") == ("7", True)  # a box wins over last number
    assert grade_answer("anything", None, "none") == (None, True)


def test_left_padding_and_its_attention(tokenizer):
    prompts, truncated = encode_prompts(["sue has 5 pens", "sue has 5 pens . loses 4 . gets 3"], tokenizer,
                                        prompt_length=8, chat_template=False, pad_id=tokenizer.pad_token_id)
    pad = tokenizer.pad_token_id
    assert prompts.shape == (2, 8) and truncated == 1
    assert prompts[0, :4].tolist() == [pad] * 4 and prompts[0, 4:].tolist() == tokenizer("sue has 5 pens")["input_ids"]
    assert tokenizer.decode(prompts[1]) == "5 pens . loses 4 . gets 3"  # 10 words cut from the left to 8
    mask = prompt_attention(prompts, pad)
    assert mask.tolist() == [[False] * 4 + [True] * 4, [True] * 8]
    inner = torch.tensor([[5, pad, 6, pad]])  # a PAD inside a prompt is a token, not padding
    assert prompt_attention(torch.cat([torch.full((1, 2), pad), inner], 1), pad).tolist() == [[False] * 2 + [True] * 4]
    assert prompt_attention(torch.tensor([[5, 6, pad, pad]]), pad) is None  # right padding: attend everywhere


def test_distill_loss_keeps_left_padding_out_of_attention(tmp_path, tokenizer):
    """compute_loss on left-padded prompts == the loss with that attention mask passed explicitly, and differs
    from attending to the pads (the teacher labelled these prompts with the pads masked out)."""
    torch.manual_seed(0)
    student, _ = make_student(tiny_teacher(tmp_path, tokenizer), LoraConfig(r=4, alpha=8))
    module = DistillModule(student, DistillConfig(), lr=1e-3, weight_decay=0.0, warmup_steps=0, max_steps=1,
                           min_lr_ratio=1.0, seed=0, val_every=100)
    module.mask_ratio_progress, module.window = 0.6, 8
    batch = random_batch(len(tokenizer), student.mask_token_id, student.eos_token_id, prompt=8, gen=10)
    batch["prompt_ids"] = batch["prompt_ids"] % 20 + 4  # ordinary word ids (the tiny vocabulary), never PAD
    batch["targets"][:, :-2] = batch["targets"][:, :-2] % 20 + 4
    batch["prompt_ids"][0, :3] = student.pad_token_id  # row 0 is left-padded by 3
    batch["prompt_attention"] = prompt_attention(batch["prompt_ids"], student.pad_token_id)  # as the data module adds
    terms, _, _ = module.compute_loss(batch)

    def loss_with(attention):
        primary, complement, _, _ = module.noisy_masks(batch, module._generator())  # the same draws
        prompt, targets = batch["prompt_ids"], batch["targets"]
        mask_id = student.mask_token_id
        both = torch.cat([apply_masks(prompt, targets, primary, mask_id),
                          apply_masks(prompt, targets, complement, mask_id)])
        no_prompt = torch.zeros_like(prompt, dtype=torch.bool)
        keep = torch.cat([torch.cat([no_prompt, primary], 1), torch.cat([no_prompt, complement], 1)])
        rows = student.logits(both, None if attention is None else torch.cat([attention, attention]), keep=keep)
        full_targets = torch.cat([prompt, targets], 1).repeat(2, 1)
        return torch.nn.functional.cross_entropy(rows.float(), full_targets[keep], reduction="none")

    attention = torch.ones(2, 18, dtype=torch.long)
    attention[0, :3] = 0
    masked, unmasked = loss_with(attention), loss_with(None)  # per-row CE: primary rows, then complementary ones
    assert not torch.allclose(masked, unmasked)  # the pads do change row 0's predictions when attended
    k = int(module.noisy_masks(batch, module._generator())[0].sum())
    # compute_loss's CE terms are the mean CE of the primary / complementary rows of the MASKED forward
    assert float(terms["ce"].detach()) == pytest.approx(float(masked[:k].mean().detach()), rel=1e-5)
    assert float(terms["ce_comp"].detach()) == pytest.approx(float(masked[k:].mean().detach()), rel=1e-5)


def test_trajectory_then_distill_on_a_local_prompt_file(tmp_path):
    from d3llm_pipeline.models.families.fixture_tokenizer import prepare_fixture, words_of

    rows = [{"question": f"Tom has {a} apples and buys {b} more . How many apples ?",
             "gt_answer": f"\\boxed{{{a + b}}}"} for a, b in ((3, 4), (2, 2), (5, 1))]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = prepare_fixture(OFFICIAL / "llada_tiny", tmp_path / "llada_tiny", extra_words=words_of(data))
    common = ["model=llada_8b_instruct", f"model.path={teacher}", "model.dtype=float32", "task=dparallel_prompts",
              f"task.data_files={data}", "task.prompt_length=16", "task.gen_length=16", "decode.block_size=16",
              "threads=1"]
    traj = run_cli(tmp_path, "stage=trajectory", *common, "stage.n_prompts=3", "stage.temperatures=[0.0,0.7]",
                   f"stage.out_dir={tmp_path / 'traj'}", f"hydra.run.dir={tmp_path / 'run_traj'}")
    assert traj.returncode == 0, traj.stderr[-3000:]
    ds = datasets.load_from_disk(str(tmp_path / "traj" / "merged"))
    assert len(ds) == 3 and ds["answer"] == [r["gt_answer"] for r in rows]
    pad = 126081  # LLaDA's PAD = EOS
    for row in ds:
        assert len(row["prompt_ids"]) == 16 and row["prompt_ids"][0] == pad  # left-padded to the width
        assert len(row["response_ids"]) == len(row["unmask_step"]) == 16
        # random weights never box the answer: graded wrong, so the retry at 0.7 is the attempt kept
        assert not row["is_correct"] and row["attempt"] == 1 and row["temperature"] == pytest.approx(0.7)
        assert sorted(row["unmask_step"]) == list(range(16))  # vanilla teacher: one token per forward
    distill = run_cli(tmp_path, "stage=distill", "distill=llada", *common, f"stage.trajectories={tmp_path / 'traj'}",
                      f"stage.teacher_path={teacher}", f"stage.out_dir={tmp_path / 'student'}",
                      "distill.only_correct=false", "distill.lora.r=4", "distill.lora.alpha=4", "stage.epochs=1",
                      "stage.batch_size=2", "stage.warmup_steps=0", "distill.curriculum.window_sizes=[8,16]",
                      "distill.curriculum.fixed_window=8", f"hydra.run.dir={tmp_path / 'run_distill'}")
    assert distill.returncode == 0, distill.stderr[-3000:]
    summary = json.loads((tmp_path / "run_distill" / "metrics.json").read_text())
    assert summary["trajectories"] == 3 and summary["steps"] == 1
