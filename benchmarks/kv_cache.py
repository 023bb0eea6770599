"""The KV cache's two forward plans against no cache, on the long task: accuracy, TPF, positions run per forward and
tokens/s, every setting timed in the same process run and repeated (median and spread).

    .venv/bin/python benchmarks/kv_cache.py --model teacher=outputs/artifacts_long/teacher \
        --model student=outputs/artifacts_long/student/merged --limit 250 --threads 2 --repeats 3 --json kv.json
    .venv/bin/python benchmarks/kv_cache.py ... --thresholds 0.05,0.2,0.5,1.0 --delays 1,2 --refresh 3,none

For each model, τ and cache setting (d, R) it decodes the task's first `--limit` test samples with
`decode=d3llm` (the model preset's decode settings for the task, as `stage=eval` resolves them) three ways: no cache
(`kv_cache=false`), our plan (`cache_plan=ours`) and the official one (`cache_plan=reference`), through the eval
stage's own path (evaluation.evaluate_problems). Within a repeat the three run back to back, in an order that
rotates between repeats, so a drift in machine speed favours none. Printed per row: accuracy, TPF, positions per
forward, tokens/s (median of the repeats, min-max), and the ratio of medians against no cache. Measure on an idle
machine: the load average is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path

import torch

from d3llm_pipeline.config.decode_presets import resolve_decode
from d3llm_pipeline.config.schema import load_task
from d3llm_pipeline.decoding.spec import spec_from
from d3llm_pipeline.evaluation import evaluate_problems
from d3llm_pipeline.models.families import load_model
from d3llm_pipeline.runtime import resolve_device

PLANS = ("none", "ours", "reference")


def task_of(name: str):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "d3llm_pipeline" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return load_task(compose(config_name="config", overrides=[f"task={name}"]).task)


def settings(args) -> list[tuple[float, int, int | None]]:
    refresh = [None if r in ("none", "null") else int(r) for r in args.refresh.split(",")]
    return [(float(t), int(d), r) for t in args.thresholds.split(",") for d in args.delays.split(",") for r in refresh]


def run_row(lm, tok, problems, task, base, tau, delay, refresh, repeats: int, batch: int) -> list[dict]:
    specs = {"none": dataclasses.replace(base, threshold=tau, kv_cache=False)}
    for plan in ("ours", "reference"):
        specs[plan] = dataclasses.replace(base, threshold=tau, kv_cache=True, cache_delay_iter=delay,
                                          refresh_interval=refresh, cache_plan=plan)
    runs: dict[str, list[dict]] = {plan: [] for plan in PLANS}
    for rep in range(repeats):
        order = PLANS[rep % 3:] + PLANS[:rep % 3]
        for plan in order:
            runs[plan].append(evaluate_problems(lm, tok, problems, specs[plan], task, batch, progress=False)[1])
    rows = []
    for plan in PLANS:
        first = runs[plan][0]
        speeds = [r["tokens_per_s"] for r in runs[plan]]
        rows.append({"plan": plan, "threshold": tau, "delay": delay, "refresh": refresh,
                     "accuracy": first["accuracy"], "tpf": first["tpf"], "forwards": first["total_nfe"],
                     "positions_per_forward": first["positions_per_forward"],
                     "tokens_per_s": statistics.median(speeds), "tokens_per_s_min": min(speeds),
                     "tokens_per_s_max": max(speeds), "repeats": repeats,
                     "same_outputs_every_repeat": all(r["accuracy"] == first["accuracy"]
                                                      and r["total_nfe"] == first["total_nfe"] for r in runs[plan])})
    none = rows[0]
    for row in rows:
        row["speedup_vs_none"] = row["tokens_per_s"] / none["tokens_per_s"]
        row["accuracy_delta_points"] = 100 * (row["accuracy"] - none["accuracy"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="name=<checkpoint dir> (repeatable)")
    parser.add_argument("--task", default="arith_long")
    parser.add_argument("--limit", type=int, default=250, help="first N test samples")
    parser.add_argument("--thresholds", default="0.5")
    parser.add_argument("--delays", default="1,2", help="d: forwards a completed block waits before it is cached")
    parser.add_argument("--refresh", default="3,none", help="R: full refresh every R forwards (none: never)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA if there is one) | cpu | cuda:N")
    parser.add_argument("--json", default=None, help="also write every row here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = task_of(args.task)
    problems = task.problems("test")[: args.limit]
    decode = resolve_decode("d3llm", "tiny", args.task)  # the eval stage's decode=d3llm for the tiny family
    base, batch = spec_from(decode), int(decode.batch_size)
    rows = []
    for item in args.model:
        name, path = item.split("=", 1)
        lm, tok = load_model(path, "tiny", device=resolve_device(args.device))
        lm.eval()
        for tau, delay, refresh in settings(args):
            for row in run_row(lm, tok, problems, task, base, tau, delay, refresh, args.repeats, batch):
                row.update(model=name, task=args.task, samples=len(problems), threads=args.threads, device=str(
                           next(lm.parameters()).device),
                           load_avg_1m=round(os.getloadavg()[0], 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'model':<8} {'τ':>5} {'d':>2} {'R':>4} {'plan':<10} {'acc':>6} {'TPF':>6} {'pos/fwd':>7} "
          f"{'tok/s (min-max)':>22} {'vs none':>8}")
    for r in rows:
        pos = "-" if r["positions_per_forward"] is None else f"{r['positions_per_forward']:.1f}"
        speed = f"{r['tokens_per_s']:.0f} ({r['tokens_per_s_min']:.0f}-{r['tokens_per_s_max']:.0f})"
        print(f"{r['model']:<8} {r['threshold']:>5} {r['delay']:>2} {str(r['refresh']):>4} {r['plan']:<10} "
              f"{r['accuracy']:>6.1%} {r['tpf']:>6.2f} {pos:>7} {speed:>22} {r['speedup_vs_none']:>7.2f}x")


if __name__ == "__main__":
    main()
