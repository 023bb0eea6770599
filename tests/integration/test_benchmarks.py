"""Benchmarks through lm-eval (issue 10): presets per family, local / bundled / Hub data with one-line errors, our
task hooks' post-processing, and stage=eval task=<benchmark> end to end on the official-format LLaDA fixture:
a threshold sweep writes aup.json, and the lm-eval CLI with our model gives the same outputs and NFE.

Run: .venv/bin/python -m pytest tests/integration/test_benchmarks.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFICIAL, ROOT, compose_at, run_cli

from d3llm_pipeline.config.schema import load_task
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.lmeval import TASKS_DIR
from d3llm_pipeline.lmeval.tasks.benchmarks import hooks
from d3llm_pipeline.tasks import benchmarks
from d3llm_pipeline.tasks.graders import humaneval

GSM8K_ROWS = [  # the openai/gsm8k layout: question, answer ending in "#### N"
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 12 pens. Sara takes 5. How many pens are left?",
     "answer": "12 - 5 = <<12-5=7>>7 pens are left.\n#### 7"},
    {"question": "Each of 4 bags has 6 marbles. How many marbles are there?",
     "answer": "4 * 6 = <<4*6=24>>24 marbles.\n#### 24"},
]
MBPP_ROWS = [  # the google-research-datasets/mbpp `full` layout
    {"task_id": t, "text": f"Write a function f{t} that adds {t}.", "code": f"def f{t}(x):\n    return x + {t}",
     "test_list": [f"assert f{t}(0) == {t}", f"assert f{t}(1) == {t + 1}", f"assert f{t}(2) == {t + 2}"],
     "test_setup_code": "", "challenge_test_list": []}
    for t in (1, 2, 3, 4, 5)
]
PRESETS = ("gsm8k_cot", "long_gsm8k", "math", "humaneval", "mbpp")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- presets ---------------------------------------------------------------------------------------------------

def _setting(tmp_path, preset: str, family: str, *extra: str):
    cfg = compose_at(tmp_path, f"task={preset}", *extra)
    s = load_task(cfg.task).for_family(family)
    return (s.lmeval_task, s.num_fewshot, s.apply_chat_template)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", ["llada", "dream", "tiny"])
def test_every_preset_names_a_task_we_ship(tmp_path, preset, family):
    lmeval_task, _, _ = _setting(tmp_path, preset, family)
    assert (TASKS_DIR / "benchmarks" / f"{lmeval_task}.yaml").is_file()


def test_presets_follow_method_md_per_family(tmp_path):
    """method.md §9.1 / §7: MATH 4-shot raw for LLaDA, 0-shot in the chat template for Dream; LLaDA's HumanEval is
    the chat-wrapped prompt, Dream's the instruct one with the assistant prefix; MBPP 3 vs 4 shots."""
    assert _setting(tmp_path, "math", "llada") == ("d3llm_minerva_math", 4, False)
    assert _setting(tmp_path, "math", "dream") == ("d3llm_minerva_math", 0, True)
    assert _setting(tmp_path, "gsm8k_cot", "llada") == ("d3llm_gsm8k_cot_zeroshot", 0, False)
    assert _setting(tmp_path, "gsm8k_cot", "dream") == ("d3llm_gsm8k_cot_zeroshot", 0, True)
    assert _setting(tmp_path, "humaneval", "llada") == ("d3llm_humaneval_chat", 0, True)
    assert _setting(tmp_path, "humaneval", "dream") == ("d3llm_humaneval_instruct", 0, True)
    assert _setting(tmp_path, "mbpp", "llada") == ("d3llm_mbpp", 3, True)
    assert _setting(tmp_path, "mbpp", "dream") == ("d3llm_mbpp_instruct", 4, True)
    assert _setting(tmp_path, "long_gsm8k", "llada") == ("d3llm_gsm8k", 5, False)
    # a value on the task itself wins over the family's
    assert _setting(tmp_path, "math", "dream", "task.num_fewshot=2")[1] == 2


# --- data --------------------------------------------------------------------------------------------------------

def test_local_copy_in_the_hub_layout(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    splits = benchmarks.load_splits("gsm8k", str(test))
    assert list(splits) == ["test"] and splits["test"]["question"] == [r["question"] for r in GSM8K_ROWS]
    with pytest.raises(ConfigError, match=r"task.num_fewshot=5 takes examples from the 'train' split"):
        benchmarks.require_fewshot_split("gsm8k", splits, 5)
    benchmarks.require_fewshot_split("gsm8k", splits, 0)
    both = benchmarks.load_splits("gsm8k", {"test": str(test), "train": str(test)})
    benchmarks.require_fewshot_split("gsm8k", both, 5)


@pytest.mark.parametrize(("data_files", "message"), [
    ("{root}/missing.jsonl", r"test file .*missing.jsonl does not exist"),
    ("{root}/data.txt", r"is not one of .jsonl"),
    ("{root}/wrong.jsonl", r"lack field\(s\) answer; openai/gsm8k rows have question, answer"),
    ({"train": "{root}/wrong.jsonl"}, r"gives splits train but not 'test'"),
])
def test_bad_local_data_is_one_line(tmp_path, data_files, message):
    (tmp_path / "data.txt").write_text("x")
    write_jsonl(tmp_path / "wrong.jsonl", [{"question": "q"}])
    files = ({k: v.format(root=tmp_path) for k, v in data_files.items()} if isinstance(data_files, dict)
             else data_files.format(root=tmp_path))
    with pytest.raises(ConfigError, match=message) as err:
        benchmarks.load_splits("gsm8k", files)
    assert "\n" not in str(err.value)


def test_offline_without_data_names_the_dataset_and_the_fix():
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    with pytest.raises(ConfigError) as err:
        benchmarks.load_splits("hendrycks_math")
    text = str(err.value)
    assert "EleutherAI/hendrycks_math" in text and "task.data_files=" in text and "\n" not in text


def test_humaneval_is_bundled_offline():
    test = benchmarks.load_splits("humaneval")["test"]
    assert len(test) == 164 and test[0]["task_id"] == "HumanEval/0"


# --- task hooks: post-processing + grading ----------------------------------------------------------------------

def test_humaneval_hooks_pass_canonical_answers_in_each_format():
    """What each task variant receives for a correct answer: a continuation (humaneval), the body before the
    closing fence (instruct), a chat answer with a whole fenced function (LLaDA chat); a wrong one fails."""
    docs = [vars(p) for p in humaneval.load_problems()[:4]]
    for doc in docs:
        body = doc["canonical_solution"]
        assert hooks.humaneval_results(doc, [body]) == {"pass_at_1": 1}
        assert hooks.humaneval_instruct_results(doc, [body + "```\nThat is all."]) == {"pass_at_1": 1}
        chat = f"Sure!\n```python\n{doc['prompt']}{body}```\nDone."
        assert hooks.humaneval_chat_results(doc, [chat]) == {"pass_at_1": 1}
        assert hooks.humaneval_results(doc, ["    return None\n"]) == {"pass_at_1": 0}


def test_mbpp_hooks_and_fewshot_order(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", MBPP_ROWS[3:])
    prompt = write_jsonl(tmp_path / "prompt.jsonl", MBPP_ROWS)
    splits = hooks.load("mbpp", {"test": str(test), "prompt": str(prompt)})
    assert splits["prompt"]["task_id"][:3] == [2, 3, 4]  # lm-eval's three examples first, then the rest in order
    assert splits["prompt"]["task_id"][3:] == [1, 5] and all(splits["prompt"]["is_fewshot"])
    doc = splits["test"][0]
    assert not doc["is_fewshot"] and hooks.mbpp_target(splits["prompt"][0]).endswith("\n[DONE]")
    assert hooks.mbpp_results(doc, [doc["code"]]) == {"pass_at_1": 1}
    assert hooks.mbpp_instruct_results(doc, [doc["code"] + "\n```\n"]) == {"pass_at_1": 1}
    assert hooks.mbpp_results(doc, ["def f4(x):\n    return x"]) == {"pass_at_1": 0}
    no_prompt = hooks.load("mbpp", str(test))  # a 0-shot run needs no prompt split: an empty one stands in
    assert len(no_prompt["prompt"]) == 0


def test_gsm8k_hooks_report_both_filters():
    doc = GSM8K_ROWS[2]
    assert hooks.gsm8k_cot_results(doc, ["4 * 6 = 24. The answer is 24."]) == {"strict_match": 1,
                                                                               "flexible_extract": 1}
    assert hooks.gsm8k_cot_results(doc, ["so we get 24"]) == {"strict_match": 0, "flexible_extract": 1}
    assert hooks.gsm8k_results(doc, ["4 * 6 = 24\n#### 24"]) == {"strict_match": 1, "flexible_extract": 1}


# --- end to end on the official-format LLaDA fixture ------------------------------------------------------------

@pytest.fixture(scope="module")
def llada_bench(tmp_path_factory):
    from d3llm_pipeline.models.families.fixture_tokenizer import prepare_fixture, words_of

    root = tmp_path_factory.mktemp("bench")
    data = write_jsonl(root / "gsm8k_test.jsonl", GSM8K_ROWS)
    chat = ("{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> {{ m['content'] }} "
            "<|eot_id|> {% endfor %}{% if add_generation_prompt %}<|start_header_id|> assistant <|end_header_id|> "
            "{% endif %}")
    model = prepare_fixture(OFFICIAL / "llada_tiny", root / "llada_tiny", chat_template=chat,
                            extra_words=words_of(data) + ("Q:", "A:", "Let's", "think", "step", "by", "step."))
    return root, data, model


def _eval_args(model: Path, *extra: str) -> list[str]:
    return ["stage=eval", "model=llada_8b_instruct", f"model.path={model}", "model.dtype=float32", "threads=1",
            "decode=d3llm", "task.gen_length=32", *extra]


def test_threshold_sweep_on_a_benchmark_writes_the_aup_report(llada_bench):
    root, data, model = llada_bench
    sweep = root / "sweep"
    proc = run_cli(root, "-m", *_eval_args(model, "task=gsm8k_cot", f"task.data_files={data}"),
                   "decode.threshold=0.3,3.0", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((sweep / "aup.json").read_text())
    (curve,) = report["curves"]
    assert [p["threshold"] for p in curve["points"]] == [0.3, 3.0] and (sweep / "aup_curve.png").is_file()
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        records = [json.loads(line) for line in (sweep / job / "generations.jsonl").read_text().splitlines()]
        assert metrics["n"] == len(records) == 3
        assert metrics["task"]["lmeval_task"] == "d3llm_gsm8k_cot_zeroshot" and metrics["metric"] == "flexible_extract"
        assert metrics["accuracy"] == metrics["metrics"]["flexible_extract"]
        assert metrics["decoder"]["accept_global_best_resolved"] is True  # null ran as LLaDA's global-best rule
        assert metrics["total_nfe"] == sum(r["nfe"] for r in records)
        assert metrics["total_tokens"] == sum(r["tokens"] for r in records)
        assert metrics["tpf"] == pytest.approx(metrics["total_tokens"] / metrics["total_nfe"])
        assert all(0 <= r["tokens"] <= 32 and r["nfe"] >= 1 for r in records)
        point = next(p for p in curve["points"] if p["run_dir"].endswith(f"/{job}"))
        assert point["tpf"] == pytest.approx(metrics["tpf"])
    # a larger τ commits more per forward: never more forwards
    nfe = [json.loads((sweep / j / "metrics.json").read_text())["total_nfe"] for j in ("0", "1")]
    assert nfe[1] <= nfe[0]


def test_stage_and_lm_eval_cli_give_the_same_outputs(llada_bench):
    """The eval stage and `python -m d3llm_pipeline.lmeval` (lm-eval's own CLI with --model d3llm) on the same
    fixture, data and decode settings: identical texts, NFE and token counts per document."""
    root, data, model = llada_bench
    run_dir = root / "single"
    proc = run_cli(root, *_eval_args(model, "task=gsm8k_cot", f"task.data_files={data}", "decode.threshold=0.3"),
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage_rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]

    stats = root / "cli_stats.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = subprocess.run(
        [sys.executable, "-m", "d3llm_pipeline.lmeval", "--model", "d3llm", "--model_args",
         f"preset=llada_8b_instruct,pretrained={model},dtype=float32,decode=d3llm,threshold=0.3,gen_length=32,"
         f"threads=1,batch_size=64,stats_path={stats}",
         "--tasks", "d3llm_gsm8k_cot_zeroshot", "--metadata", json.dumps({"data_files": str(data)})],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "flexible_extract" in cli.stdout and "strict_match" in cli.stdout
    cli_rows = sorted((json.loads(line) for line in stats.read_text().splitlines()), key=lambda r: r["doc_id"])
    assert [(r["output"], r["nfe"], r["tokens"]) for r in cli_rows] == \
        [(r["output"], r["nfe"], r["tokens"]) for r in stage_rows]


def test_code_tasks_need_the_opt_in_then_run_sandboxed(llada_bench):
    root, _, model = llada_bench
    refused = run_cli(root, *_eval_args(model, "task=humaneval", "stage.limit=2"))
    assert refused.returncode == 2
    assert "opt in with task.allow_code_execution=true" in refused.stderr.strip().splitlines()[-1]
    run_dir = root / "humaneval"
    proc = run_cli(root, *_eval_args(model, "task=humaneval", "stage.limit=2", "task.allow_code_execution=true"),
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["metric"] == "pass_at_1" and metrics["accuracy"] == 0.0  # random weights
    assert metrics["task"]["lmeval_task"] == "d3llm_humaneval_chat" and metrics["task"]["apply_chat_template"]


def test_metric_names_come_from_our_task_files():
    from d3llm_pipeline.stages.benchmark_eval import task_metrics

    assert task_metrics("d3llm_gsm8k_cot_zeroshot") == ["strict_match", "flexible_extract"]
    assert task_metrics("d3llm_humaneval_instruct") == ["pass_at_1"]  # through `include`
    assert task_metrics("d3llm_mbpp_instruct") == ["pass_at_1"] and task_metrics("gsm8k") is None


def test_a_metric_the_task_lacks_fails_before_the_model_loads(tmp_path):
    proc = run_cli(tmp_path, "stage=eval", "task=gsm8k_cot", "task.metric=acc", "model.path=/nonexistent")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: task.metric='acc' is not a metric of lm-eval task d3llm_gsm8k_cot_zeroshot; it reports "
        "strict_match, flexible_extract")


def test_a_report_over_several_tasks_scores_each_against_its_own_best():
    """`-m task=gsm8k_cot,math ...`: curves per task, each AUP against that task's best accuracy (y_max)."""
    from d3llm_pipeline.reporting.aggregate import build_report
    from d3llm_pipeline.reporting.aup import aup

    def run(task, tpf, acc, th):
        return {"task": {"name": task}, "model": {"name": "m"}, "decoder": {"name": "d3llm", "threshold": th},
                "tpf": tpf, "accuracy": acc, "run_dir": f"{task}/{th}"}

    runs = [run("gsm8k_cot", 2.0, 0.8, 0.3), run("gsm8k_cot", 4.0, 0.7, 0.6),
            run("math", 2.0, 0.3, 0.3), run("math", 3.0, 0.2, 0.6)]
    report = build_report(runs)
    curves = {c["task"]: c for c in report["curves"]}
    assert set(curves) == {"gsm8k_cot", "math"} and curves["math"]["model"] == "math: m"
    assert curves["math"]["y_max"] == pytest.approx(30.0) and curves["gsm8k_cot"]["y_max"] == pytest.approx(80.0)
    assert curves["math"]["aup"] == pytest.approx(aup([(2.0, 30.0), (3.0, 20.0)], 30.0))
    single = build_report(runs[:2])["curves"][0]
    assert single["model"] == "m" and single["aup"] == pytest.approx(curves["gsm8k_cot"]["aup"])
