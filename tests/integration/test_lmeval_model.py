"""The lm-eval integration (d3llm_pipeline/lmeval): our decoders as lm-eval model `d3llm` and the arith task.

The key check: the same arith problems run through our in-house `evaluate_problems` and through
`lm_eval.simple_evaluate` with `D3LLMEvalModel` give the same per-sample outputs, accuracy, NFE, tokens and TPF,
for decode=threshold and decode=d3llm. The model is a tiny teacher trained for a few seconds (accuracy ~0, so
outputs are compared one by one). Run: .venv/bin/python -m pytest tests/integration/test_lmeval_model.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_in_process

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

from d3llm_pipeline.errors import ConfigError  # noqa: E402
from d3llm_pipeline.lmeval import D3LLMEvalModel, task_manager  # noqa: E402
from d3llm_pipeline.lmeval.tasks.arith.arith_task import arith_problems, process_results  # noqa: E402

N_PROBLEMS = 24
BATCH = 8


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny teacher (2 layers, width 48) trained for 150 SFT steps (~5 s), saved as a checkpoint dir.

    Barely trained on purpose: it has learned the answer format and EOS padding, so outputs differ per problem,
    end early (early stop) and reveal several tokens per forward, while accuracy stays near 0. A random model
    would emit the same 64 tokens for every prompt and exercise none of that.
    """
    from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
    from d3llm_pipeline.objectives.losses import masked_cross_entropy
    from d3llm_pipeline.objectives.sft import sft_noise
    from d3llm_pipeline.tasks import arith
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    lm = build_tiny_teacher(tok, max_positions=88, n_embd=48, n_layer=2, n_head=2, seed=0)
    prompts, responses = arith.encode(arith.ArithTask(n_train=2000, n_val=0, n_test=1).problems("train"),
                                      tok, 24, 64)
    ids = torch.cat([prompts, responses], dim=1)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 24:] = True
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(ids), (32,), generator=g)
        noisy, masked = sft_noise(ids[idx], maskable[idx], lm.mask_token_id, generator=g)
        loss = masked_cross_entropy(lm.logits(noisy), ids[idx], masked)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("lmeval") / "teacher"
    save_tiny_teacher(lm.eval(), tok, path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("decode,knobs", [("threshold", {}), ("d3llm", {"threshold": 0.5}),
                                          ("d3llm", {"kv_cache": True, "refresh_interval": 3})])
def test_same_as_evaluate_problems(teacher_dir, decode, knobs):
    from d3llm_pipeline.evaluation import evaluate_problems
    from d3llm_pipeline.models.families import load_model
    from d3llm_pipeline.tasks.arith import ArithTask

    model = D3LLMEvalModel(pretrained=str(teacher_dir), decode=decode, batch_size=BATCH, **knobs)
    spec = model.spec_for(64)
    assert spec.rule == decode and spec.gen_length == 64 and model.family == "tiny"
    for key, value in knobs.items():
        assert getattr(spec, key) == value

    lm, tok = load_model(teacher_dir, "tiny")
    problems = arith_problems(arith_n=N_PROBLEMS)
    records, ours = evaluate_problems(lm, tok, problems, spec, ArithTask(), batch_size=BATCH, progress=False)

    out = lm_eval.simple_evaluate(model=model, tasks=["arith"], task_manager=task_manager(arith_n=N_PROBLEMS),
                                  log_samples=True)
    theirs = model.summary()
    stats = sorted(model.stats, key=lambda s: s["doc_id"])
    assert [s["prompt"] for s in stats] == [p.prompt for p in problems]  # lm-eval hands over the prompt as is
    assert [s["output"] for s in stats] == [r["output"] for r in records]
    assert [s["nfe"] for s in stats] == [r["nfe"] for r in records]
    assert [s["tokens"] for s in stats] == [r["tokens"] for r in records]
    assert (theirs["n"], theirs["total_nfe"], theirs["total_tokens"]) == (N_PROBLEMS, ours["total_nfe"],
                                                                         ours["total_tokens"])
    assert theirs["tpf"] == ours["tpf"]
    assert theirs["by_task"]["arith"]["total_nfe"] == ours["total_nfe"]
    result = out["results"]["arith"]
    assert result["exact_match,none"] == ours["accuracy"]
    assert result["chain_correct,none"] == ours["chain_accuracy"]
    # the comparison is not vacuous: outputs differ, some stop early, and forwards reveal several tokens each
    assert len({r["output"] for r in records}) > 1 and min(r["tokens"] for r in records) < 64
    assert ours["total_tokens"] > ours["total_nfe"]
    samples = sorted(out["samples"]["arith"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == [r["output"] for r in records]
    assert [s["exact_match"] for s in samples] == [int(r["correct"]) for r in records]


def test_arith_task_docs_and_grader():
    task = task_manager(arith_n=5).load(["arith"])["tasks"]["arith"]  # offline: documents made from the seed
    problems = arith_problems(arith_n=5)
    docs = list(task.test_docs())
    assert [task.doc_to_text(d) for d in docs] == [p.prompt for p in problems]
    assert task.config.generation_kwargs["max_gen_toks"] == 64 and task.config.num_fewshot == 0
    assert len(problems) == 5 and problems == arith_problems()[:5]
    doc = {"prompt": problems[0].prompt, "response": problems[0].response, "answer": problems[0].answer}
    assert process_results(doc, [problems[0].response]) == {"exact_match": 1, "chain_correct": 1}
    wrong = problems[0].response.rsplit("####", 1)[0] + f"#### {(problems[0].answer + 1) % 10}"
    assert process_results(doc, [wrong])["exact_match"] == 0
    assert process_results(doc, ["[MASK] [MASK]"]) == {"exact_match": 0, "chain_correct": 0}


def test_model_args_from_string(teacher_dir):
    model = D3LLMEvalModel.create_from_arg_string(
        f"pretrained={teacher_dir},decode=d3llm,threshold=0.3,block_size=8,kv_cache=true,refresh_interval=none,"
        "batch_size=4")
    spec = model.spec_for(60)  # max_gen_toks 60 -> 64, the next multiple of block_size 8
    assert (spec.rule, spec.threshold, spec.block_size, spec.kv_cache, spec.refresh_interval, spec.gen_length) == (
        "d3llm", 0.3, 8, True, None, 64)
    assert model.batch_size == 4
    assert D3LLMEvalModel(pretrained=str(teacher_dir), gen_length=32).spec_for(500).gen_length == 32
    with pytest.raises(ConfigError, match="unknown model_args"):
        D3LLMEvalModel(pretrained=str(teacher_dir), treshold=0.3)
    with pytest.raises(ConfigError, match="not a preset"):
        D3LLMEvalModel(pretrained=str(teacher_dir), decode="fast")
    with pytest.raises(ConfigError, match="must divide"):
        D3LLMEvalModel(pretrained=str(teacher_dir), block_size=24, gen_length=64)  # checked at construction
    with pytest.raises(ConfigError, match="kv_cache"):
        D3LLMEvalModel(pretrained=str(teacher_dir), kv_cache="maybe")


def test_model_presets_feed_loading_and_decode_defaults(teacher_dir, tmp_path):
    from d3llm_pipeline.config.decode_presets import model_section, resolve_decode

    dream = model_section("d3llm_dream")
    assert resolve_decode("d3llm", "d3llm_dream").threshold == dream["decode_defaults"]["threshold"] == 0.4
    assert resolve_decode("d3llm").threshold == 0.5  # no model preset: the decode preset's own fallback
    tiny = model_section("tiny")
    assert tiny["family"] == "tiny" and tiny["path"].endswith("outputs/artifacts/teacher")  # ${paths...} resolved
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"family: tiny\npath: {teacher_dir}\ndtype: float32\ndecode_defaults:\n  threshold: 0.3\n")
    model = D3LLMEvalModel(pretrained=str(preset), decode="d3llm")
    assert model.pretrained == str(teacher_dir) and model.spec_for(64).threshold == 0.3
    assert D3LLMEvalModel(preset=str(preset), decode="d3llm", threshold=0.2).spec_for(64).threshold == 0.2
    with pytest.raises(ConfigError, match="not a preset"):
        D3LLMEvalModel(preset="no_such_model")


def test_stop_strings_cut_text_and_tokens(teacher_dir):
    model = D3LLMEvalModel(pretrained=str(teacher_dir))
    tok = model.tokenizer
    ids = tok("5 - 4 = 1 , 1 + 3 = 4 #### 4")["input_ids"] + [model.lm.eos_token_id] * 3 + tok("9")["input_ids"]
    assert model._text_and_tokens(ids, []) == ("5 - 4 = 1 , 1 + 3 = 4 #### 4", 13)  # cut at the first EOS
    text, tokens = model._text_and_tokens(ids, [","])
    assert text.strip() == "5 - 4 = 1" and tokens == 5  # tokens before the stop string only
    text, tokens = model._text_and_tokens(ids, ["####", "+"])  # the earliest stop string wins
    assert text.strip() == "5 - 4 = 1 , 1" and tokens == 7


def test_left_padded_batches_and_grouping(teacher_dir):
    """Without a fixed prompt_length, prompts are left-padded per batch with an attention mask; requests with
    different max_gen_toks decode in separate groups, and outputs come back in request order."""
    from lm_eval.api.instance import Instance

    model = D3LLMEvalModel(pretrained=str(teacher_dir), batch_size=2, prompt_length=0)  # 0: the real-model layout
    assert model.prompt_length is None and D3LLMEvalModel(pretrained=str(teacher_dir)).prompt_length == 24
    ids, mask = model._encode(["sue has 5 pens .", "tom has 3 cards . buys 2 ."])
    pad = model.lm.pad_token_id
    assert ids.shape == mask.shape == (2, 8) and ids[0, :3].tolist() == [pad] * 3
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8]
    problems = arith_problems(arith_n=3)
    reqs = [Instance("generate_until", {}, (p.prompt, {"until": ["[EOS]"], "max_gen_toks": n}), 0,
                     metadata=("arith", i, 1)) for i, (p, n) in enumerate(zip(problems, (64, 20, 64), strict=True))]
    texts = model.generate_until(reqs)
    assert len(texts) == 3 and texts == [s["output"] for s in sorted(model.stats, key=lambda s: s["doc_id"])]
    assert sorted((s["doc_id"], s["gen_length"]) for s in model.stats) == [(0, 64), (1, 32), (2, 64)]
    assert all(s["tokens"] <= s["gen_length"] and 1 <= s["nfe"] for s in model.stats)


def test_loglikelihood_is_refused_with_the_task_name(teacher_dir):
    from lm_eval.api.instance import Instance

    model = D3LLMEvalModel(pretrained=str(teacher_dir))
    req = Instance("loglikelihood", {}, ("ctx", " cont"), 0, metadata=("hellaswag", 0, 1))
    with pytest.raises(NotImplementedError, match="hellaswag.*loglikelihood"):
        model.loglikelihood([req])
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        model.loglikelihood_rolling([req])


def test_chat_template(teacher_dir):
    model = D3LLMEvalModel(pretrained=str(teacher_dir))
    assert model.tokenizer_name == str(teacher_dir).replace("/", "__")
    with pytest.raises(ConfigError, match="no chat template"):
        model.apply_chat_template([{"role": "user", "content": "sue has 5 pens ."}])
    model.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}[SEP]"
    assert model.chat_template(True) == model.tokenizer.chat_template and model.chat_template(False) is None
    text = model.apply_chat_template([{"role": "user", "content": "sue has 5 pens . how many ?"}])
    assert text == "sue has 5 pens . how many ? [SEP]" and model._chat


def test_cli_runs_arith(teacher_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    stats = tmp_path / "stats.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "d3llm_pipeline.lmeval", "--model", "d3llm", "--model_args",
         f"pretrained={teacher_dir},decode=d3llm,threshold=0.5,batch_size=8,threads=1,stats_path={stats}",
         "--tasks", "arith", "--metadata", json.dumps({"arith_n": 8}), "--output_path", str(tmp_path / "lmeval")],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arith" in proc.stdout and "exact_match" in proc.stdout
    assert '"tpf"' in proc.stderr  # our summary line (NFE, tokens, TPF) is logged
    rows = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(rows) == 8 and all(r["nfe"] >= 1 and r["task"] == "arith" for r in rows)
    # stage=report turns the lm-eval output into an AUP curve: one point, TPF = Σ tokens / Σ NFE of the requests
    (results,) = (tmp_path / "lmeval").rglob("results_*.json")
    report = cli_in_process(tmp_path, "stage=report", f"stage.runs=[{tmp_path / 'lmeval'}]",
                            f"hydra.run.dir={tmp_path / 'report'}")
    assert report.returncode == 0, report.stderr[-2000:]
    (curve,) = json.loads((tmp_path / "report" / "aup.json").read_text())["curves"]
    (point,) = curve["points"]
    assert curve["model"] == "teacher" and curve["decoder"] == "d3llm" and point["threshold"] == 0.5
    assert point["tpf"] == pytest.approx(sum(r["tokens"] for r in rows) / sum(r["nfe"] for r in rows))
    exact_match = json.loads(results.read_text())["results"]["arith"]["exact_match,none"]
    assert point["accuracy"] == pytest.approx(100 * exact_match) and curve["aup"] > 0
    assert (tmp_path / "report" / "aup_curve.png").is_file()


@pytest.mark.parametrize("case", ["no_tokenizer", "no_checkpoint", "offline_without_data"])
def test_cli_mistakes_end_in_one_line_before_lm_eval_starts(teacher_dir, tmp_path, case):
    """Each fails in the checks that run before lm-eval indexes its tasks (~12 s) or loads the model: exit 2, one
    `error:` line. Offline by default, as the main CLI: no HF_* variable set here."""
    bare = tmp_path / "bare"
    shutil.copytree(teacher_dir, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    pretrained, task, expected = {
        "no_tokenizer": (bare, "arith", "holds no tokenizer"),
        "no_checkpoint": (tmp_path / "nope", "arith", "holds no checkpoint (no config.json)"),
        "offline_without_data": (teacher_dir, "d3llm_gsm8k_cot_zeroshot",
                                 "cannot load dataset openai/gsm8k (main): the Hub is offline"),
    }[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.run([sys.executable, "-m", "d3llm_pipeline.lmeval", "--model", "d3llm", "--model_args",
                           f"pretrained={pretrained}", "--tasks", task], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert expected in lines[0]


def test_sampled_outputs_do_not_depend_on_batching(teacher_dir):
    """decode.temperature > 0: each prompt's noise is keyed by its problem index (evaluate_problems) or its text
    (the lm-eval model), so outputs are the same at any batch size or order, and they are not the greedy ones."""
    from dataclasses import replace

    from d3llm_pipeline.evaluation import evaluate_problems
    from d3llm_pipeline.models.families import load_model
    from d3llm_pipeline.tasks.arith import ArithTask

    lm, tok = load_model(teacher_dir, "tiny")
    problems = arith_problems(arith_n=N_PROBLEMS)
    greedy = D3LLMEvalModel(pretrained=str(teacher_dir), decode="threshold", batch_size=BATCH).spec_for(64)
    spec = replace(greedy, temperature=1.5, seed=3)
    outputs = [[r["output"] for r in evaluate_problems(lm, tok, problems, spec, ArithTask(), batch, progress=False)[0]]
               for batch in (4, 7)]
    assert outputs[0] == outputs[1]
    plain = [r["output"] for r in evaluate_problems(lm, tok, problems, greedy, ArithTask(), 8, progress=False)[0]]
    assert plain != outputs[0]
    texts = []
    for batch in (3, 8):
        model = D3LLMEvalModel(pretrained=str(teacher_dir), decode="threshold", batch_size=batch, temperature=1.5,
                               seed=3)
        lm_eval.simple_evaluate(model=model, tasks=["arith"], task_manager=task_manager(arith_n=N_PROBLEMS))
        texts.append([s["output"] for s in sorted(model.stats, key=lambda s: s["doc_id"])])
    assert texts[0] == texts[1] and texts[0] != plain
