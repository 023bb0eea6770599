"""Shared setup of the real-family workflow tests (test_paper_pipeline, test_real_ablation, test_launcher): an
official-format fixture teacher (random weights) with a tokenizer that knows the local data's words, a local prompt
file for the trajectories, local GSM8K files for the benchmarks, and the size overrides that keep a paper experiment
small (prompt count, lengths, training steps, test problems). Nothing else of the experiment is changed, except
Dream's correct-only filter: random weights answer nothing correctly.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CONF, OFFICIAL

PROMPTS = [{"question": f"Tom has {a} apples and buys {b} more . How many apples ?", "gt_answer": f"\\boxed{{{a + b}}}"}
           for a, b in ((3, 4), (2, 2), (5, 1), (1, 1))]
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
         {"question": "A box holds 12 pens. Sara takes 5. How many pens are left?",
          "answer": "12 - 5 = <<12-5=7>>7 pens are left.\n#### 7"}]
# The released tokenizers carry a chat template (Dream's prompt set and benchmarks go through it); a short one in each
# family's own special tokens stands in for it on the fixture.
CHAT = {"llada": "{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> {{ m['content'] }} "
                 "<|eot_id|> {% endfor %}{% if add_generation_prompt %}<|start_header_id|> assistant "
                 "<|end_header_id|> {% endif %}",
        "dream": "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"}
EXPERIMENT = {"llada": "d3llm_llada", "dream": "d3llm_dream"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def quoted_list(*items: str) -> str:
    """A list override whose items hold paths or braces: each one quoted."""
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


def paper_setup(root: Path, family: str, lora_r: int | None = 4) -> tuple[Path, list[str]]:
    """(the prepared teacher dir, the overrides of `experiment=<the family's d3LLM recipe>` at test size).

    lora_r: the distill step's LoRA rank (None: the recipe's own)."""
    from d3llm_pipeline.models.families.fixture_tokenizer import prepare_fixture, words_of

    prompts = write_jsonl(root / "prompts.jsonl", PROMPTS)
    test, train = write_jsonl(root / "gsm8k_test.jsonl", GSM8K), write_jsonl(root / "gsm8k_train.jsonl", GSM8K * 3)
    words = words_of(prompts) + words_of(test) + ("Question:", "Answer:", "Q:", "A:", "Let's", "think", "step", "by",
                                                  "user", "assistant")
    teacher = prepare_fixture(OFFICIAL / f"{family}_tiny", root / "teacher", chat_template=CHAT[family],
                              extra_words=words)
    sizes = ["task.prompt_length=48", "task.gen_length=32"]
    lora = [] if lora_r is None else [f"distill.lora.r={lora_r}", f"distill.lora.alpha={lora_r}"]
    overrides = [
        f"experiment={EXPERIMENT[family]}", "threads=1", f"paths.root_dir={root}", f"model.path={teacher}",
        "model.dtype=float32", "suite.eval_tasks=[gsm8k_cot,long_gsm8k]", "suite.thresholds=[0.5]",
        "suite.teacher_decoders=[d3llm]", "suite.student_decoders=[d3llm]",
        "stage.step_overrides.trajectory=" + quoted_list(f"task.data_files={prompts}", "stage.n_prompts=4",
                                                         "stage.temperatures=[0.0]", *sizes),
        "stage.step_overrides.distill=" + quoted_list(f"task.data_files={prompts}", "stage.epochs=1",
                                                      "stage.batch_size=2", *lora, "distill.only_correct=false",
                                                      *sizes),
        "stage.step_overrides.eval=" + quoted_list(f"task.data_files={{test: {test}, train: {train}}}",
                                                   "stage.limit=2", "task.gen_length=32")]
    return teacher, overrides


def run_step_stage(root: Path, stage: str, overrides: list[str]) -> dict:
    """`python -m d3llm_pipeline stage=<stage> <overrides>` (a stage that runs steps: pipeline, ablation) in this
    process, into <root>/run; its result."""
    from hydra import compose, initialize_config_dir

    from d3llm_pipeline.stages import call_stage

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"stage={stage}", f"+output_dir={root / 'run'}",
                                                       f"+pipeline_overrides={overrides}", *overrides])
        return call_stage(cfg)
