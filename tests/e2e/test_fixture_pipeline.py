"""stage=pipeline on a REAL family: the official-format LLaDA / Dream fixtures (random weights) as teacher.

Accuracy is meaningless on random weights; what is checked is that the documented fixture experiment runs every
step on a real family's ids and native loader: the teacher checkpoint is reused (stage=teacher trains only the tiny
family), trajectories are written and the report holds the teacher's and the student's curves. One family here: the
paper recipes' test (test_paper_pipeline.py) runs both families and checks the merged student's format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONF, OFFICIAL
from hydra import compose, initialize_config_dir

from d3llm_pipeline.models.families.fixture_tokenizer import build_fixture_tokenizer, prepare_fixture
from d3llm_pipeline.stages import call_stage
from d3llm_pipeline.tasks import arith

STEPS = ("stage.step_overrides={trajectory: ['stage.n_prompts=8'], "
         "distill: ['stage.epochs=1', 'stage.batch_size=8', 'stage.warmup_steps=1']}")


def run_pipeline(root: Path, experiment: str, teacher: Path) -> dict:
    overrides = [f"experiment={experiment}", "threads=1", f"paths.root_dir={root}", f"model.path={teacher}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # the stage keys of the experiment file's first comment line (the command that runs it)
        cfg = compose(config_name="config", overrides=[
            "stage=pipeline", "stage.thresholds=[0.5]", STEPS, f"+output_dir={root / 'run'}",
            f"+pipeline_overrides={overrides}", *overrides])
        return call_stage(cfg)


def test_pipeline_runs_on_an_official_format_fixture(tmp_path, family="dream"):
    teacher = prepare_fixture(OFFICIAL / f"{family}_tiny", tmp_path / "teacher")
    result = run_pipeline(tmp_path, f"{family}_fixture", teacher)
    name = f"{family}-fixture"
    assert set(result["aup"]) == {f"{name}/vanilla", f"{name}/threshold", f"{name}/d3llm",
                                  f"{name}-student/threshold", f"{name}-student/d3llm"}
    run = tmp_path / "run"
    assert not (run / "teacher").exists()  # a real family's teacher is the given checkpoint, never trained
    trajectory = json.loads((run / "trajectory" / "metrics.json").read_text())
    assert trajectory["labelled_now"] == 8
    artifacts = tmp_path / "outputs" / f"artifacts_{family}_fixture"
    assert list((artifacts / "trajectories" / name).glob("*")), "no trajectory chunks written"
    assert (artifacts / "student" / "merged" / "model.safetensors").is_file()
    report = json.loads((run / "aup.json").read_text())
    models = {c["model"] for c in report["curves"]}
    assert models == {name, f"{name}-student"}
    assert all(c["points"] for c in report["curves"])


@pytest.mark.parametrize("family,config", [
    ("llada", {"model_type": "llada", "vocab_size": 126464, "mask_token_id": 126336, "eos_token_id": 126081,
               "pad_token_id": 126081}),
    ("dream", {"model_type": "Dream", "vocab_size": 152064, "mask_token_id": 151666, "eos_token_id": 151643,
               "pad_token_id": 151643, "bos_token_id": 151643}),
])
def test_fixture_tokenizer_encodes_arith_at_the_family_ids(family, config):
    tok = build_fixture_tokenizer(config)
    eos = config["eos_token_id"]
    assert tok.mask_token_id == config["mask_token_id"] and tok.eos_token_id == tok.pad_token_id == eos
    assert len(tok) == config["vocab_size"]
    eot = {"llada": 126348, "dream": 151645}[family]
    assert tok.convert_ids_to_tokens(eot) == {"llada": "<|eot_id|>", "dream": "<|im_end|>"}[family]
    problem = arith.ArithTask(n_train=0, n_val=0, n_test=1).problems("test")[0]
    prompts, responses = arith.encode([problem], tok, 24, 64)
    n_prompt, n_response = len(problem.prompt.split()), len(problem.response.split())
    # PAD == EOS: the prompt is padded with the shared id, the response followed by it
    assert prompts[0, n_prompt:].eq(eos).all() and not prompts[0, :n_prompt].eq(eos).any()
    assert responses[0, n_response:].eq(eos).all()
    assert arith.decode_response(responses[0], tok) == problem.response  # stops at the first EOS (= PAD)
    # any id of the model decodes (random weights emit anything), never as an arith word
    text = arith.decode_response([5000, eos, 7], tok)
    assert text == "<|id_5000|>"


def test_chat_template_wraps_the_prompt(tmp_path):
    config = {"model_type": "llada", "vocab_size": 126464, "mask_token_id": 126336, "eos_token_id": 126081,
              "pad_token_id": 126081}
    tok = build_fixture_tokenizer(config)
    # a toy template whose only extra word is a special token the tokenizer holds
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} <|eot_id|>{% endfor %}"
    problem = arith.Problem(prompt="sue has 5 pens . how many ? [SEP]", response="#### 5", answer=5)
    prompts, _ = arith.encode([problem], tok, 24, 64)
    words = tok.convert_ids_to_tokens(prompts[0].tolist())
    assert words[:10] == [*problem.prompt.split(), "<|eot_id|>"] and words[10] == "<|endoftext|>"
