"""stage=eval on a benchmark (task=gsm8k_cot | math | humaneval | mbpp | long_gsm8k): lm-eval runs the task with our
decoders (lmeval/model.py) and we write the same metrics.json / generations.jsonl as the embedded task's eval.

    python -m d3llm_pipeline stage=eval model=d3llm_llada task=gsm8k_cot decode=d3llm
    python -m d3llm_pipeline stage=eval model.family=llada model.path=<dir> task=gsm8k_cot \
        task.data_files=gsm8k_test.jsonl stage.limit=50
    python -m d3llm_pipeline -m stage=eval model=d3llm_llada task=gsm8k_cot decode=d3llm \
        decode.threshold=0.3,0.4,0.5,0.6        # the sweep ends with aup.json / aup_curve.png

`accuracy` is the preset's `task.metric` (e.g. flexible_extract for GSM8K); every metric lm-eval computed is under
`metrics`. TPF is counted the d3LLM way (method.md §9.2): generated tokens up to the first EOS and the first
stop string, over forwards counted in full.
"""

from __future__ import annotations

import logging
from typing import Any

from d3llm_pipeline.decoding import tokens_per_forward
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.tasks import benchmarks
from d3llm_pipeline.tasks.benchmarks import BenchmarkSetting, BenchmarkTask

log = logging.getLogger(__name__)

TPF_NOTE = ("NFE counts the forwards our decoder ran; the official LLaDA multi-block decoder also counts one loop "
            "iteration without a forward when an early-stop fill removes the last masks, so its TPF is slightly "
            "lower on the same outputs. Tokens/s includes every sample (the official scripts skip 10 as warm-up).")


def precheck(task: BenchmarkTask, family: str) -> None:
    """stage=eval's engine "lm_eval" (stages/evaluate.py), before the model loads: the data is reachable, has its
    few-shot split, and code may run if it must."""
    check_data(task, task.for_family(family))


def evaluate(job, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(records, summary, task info) of lm-eval running the benchmark with our decoders (the engine's run)."""
    task = job.task
    setting = task.for_family(job.model_cfg.family)
    log.info("eval: %s (lm-eval task %s, %d-shot, chat template %s), model=%s", task.name, setting.lmeval_task,
             setting.num_fewshot, setting.apply_chat_template, job.model_cfg.name)
    model, results = run_lmeval(job, task, setting, job.stage.limit, seed)
    records, summary = summarise(model, results, setting, task.metric)
    task_info = {"name": task.name, "lmeval_task": setting.lmeval_task, "num_fewshot": setting.num_fewshot,
                 "apply_chat_template": setting.apply_chat_template, "dataset": task.dataset,
                 "data_files": task.data_files, "split": "test"}
    return records, {**summary, "tpf_note": TPF_NOTE}, task_info


def check_data(task: BenchmarkTask, setting: BenchmarkSetting) -> None:
    """The data is reachable, has its few-shot split and code may run if it must."""
    data = benchmarks.dataset_of(task.dataset)
    if data.executes_code and not task.allow_code_execution:
        raise ConfigError(f"task={task.name} is graded by running the model's code (in a sandboxed subprocess with "
                          "time and memory limits); opt in with task.allow_code_execution=true")
    metrics = task_metrics(setting.lmeval_task)
    if metrics is not None and task.metric not in metrics:
        raise ConfigError(f"task.metric={task.metric!r} is not a metric of lm-eval task {setting.lmeval_task}; "
                          f"it reports {', '.join(metrics)}")
    splits = benchmarks.load_splits(task.dataset, task.data_files)
    benchmarks.require_fewshot_split(task.dataset, splits, setting.num_fewshot)


def task_metrics(lmeval_task: str) -> list[str] | None:
    """The metric names of one of our lm-eval task YAMLs (following `include`); None for a task not ours."""
    import yaml

    from d3llm_pipeline.lmeval import TASKS_DIR

    class _Loader(yaml.SafeLoader):  # `!function` tags name hooks lm-eval imports; only the metric names matter here
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    path = TASKS_DIR / "benchmarks" / f"{lmeval_task}.yaml"
    while path.is_file():
        spec = yaml.load(path.read_text(), Loader=_Loader)
        if "metric_list" in spec:
            return [m["metric"] for m in spec["metric_list"]]
        if "include" not in spec:
            return None
        path = path.parent / spec["include"]
    return None


def run_lmeval(job, task: BenchmarkTask, setting: BenchmarkSetting, limit: int | None, seed: int):
    """lm-eval's simple_evaluate of `setting.lmeval_task` with our model; returns (model, lm-eval results)."""
    import lm_eval

    from d3llm_pipeline.lmeval import D3LLMEvalModel, task_manager

    model = D3LLMEvalModel(lm=job.lm, tokenizer=job.tokenizer, family=job.model_cfg.family, decode=job.decode.name,
                           batch_size=job.decode.batch_size, spec=job.spec, prompt_length=0)
    model.pretrained = str(job.model_cfg.path)
    eval_split = benchmarks.dataset_of(task.dataset).eval_split
    metadata = {"data_files": benchmarks.normalise_data_files(task.data_files, eval_split)}
    results = lm_eval.simple_evaluate(
        model=model, tasks=[setting.lmeval_task], num_fewshot=setting.num_fewshot, limit=limit,
        apply_chat_template=setting.apply_chat_template, fewshot_as_multiturn=task.fewshot_as_multiturn,
        log_samples=True, task_manager=task_manager(lm_eval_tasks=False, **metadata),
        confirm_run_unsafe_code=task.allow_code_execution,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        bootstrap_iters=0)
    return model, results


def summarise(model, results: dict[str, Any], setting: BenchmarkSetting, metric: str) -> tuple[list, dict]:
    """Per-request records (lm-eval's sample joined with our NFE / tokens) and the summary numbers."""
    name = setting.lmeval_task
    scores = {k.split(",")[0]: v for k, v in results["results"][name].items()
              if "," in k and isinstance(v, (int, float)) and not k.split(",")[0].endswith("_stderr")}
    if metric not in scores:
        raise ConfigError(f"task.metric={metric!r} is not a metric of lm-eval task {name}; it reports "
                          f"{', '.join(sorted(scores))}")
    stats = {int(s["doc_id"]): s for s in model.stats if s["task"] == name}
    records = []
    for sample in sorted(results["samples"][name], key=lambda s: s["doc_id"]):
        ours = stats[int(sample["doc_id"])]
        records.append({
            "doc_id": sample["doc_id"], "prompt": sample["arguments"][0][0], "output": sample["resps"][0][0],
            "reference": sample["target"], **{m: sample[m] for m in scores if m in sample},
            "correct": bool(sample.get(metric)), "nfe": ours["nfe"], "tokens": ours["tokens"],
        })
    nfe = [r["nfe"] for r in records]
    tokens = [r["tokens"] for r in records]
    wall = sum(stats[r["doc_id"]]["wall_s"] for r in records)
    summary = {
        "n": len(records), "accuracy": float(scores[metric]), "metric": metric, "metrics": scores,
        "total_nfe": int(sum(nfe)), "total_tokens": int(sum(tokens)),
        "mean_nfe": sum(nfe) / len(nfe) if nfe else None,
        "tpf": tokens_per_forward(tokens, nfe) if nfe else None,
        "positions_per_forward": None,
        "wall_s": round(wall, 3), "tokens_per_s": sum(tokens) / wall if wall > 0 else None,
    }
    return records, summary
