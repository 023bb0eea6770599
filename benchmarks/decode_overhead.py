"""Decode overhead: how much of decoding time is the model forward vs the decode rule and bookkeeping.

    .venv/bin/python benchmarks/decode_overhead.py                     # random tiny backbone, vocabulary 32k
    .venv/bin/python benchmarks/decode_overhead.py --n-embd 512 --threads 2 --json out.json
    .venv/bin/python benchmarks/decode_overhead.py --teacher outputs/artifacts/teacher   # the trained teacher
    .venv/bin/python benchmarks/decode_overhead.py --entropy-dtype float64   # the cost of decode.entropy_dtype

Decodes the same prompts with every decoder (vanilla, threshold, d3llm, d3llm + KV cache) at batch 1 and 16 and
prints one JSON line per run and a table: wall time, model calls, sample forwards, the share of wall time inside
the model forward (logits / forward_kv, LM head included) against the decode rule and bookkeeping, and tokens/s.
With a random model the outputs are noise, but the cost of the rule (softmax, entropy and selection over V
logits per candidate) is what it would be for a real model with this vocabulary. The d3LLM reference spends
about 75% of its decode time outside the forward at these vocabulary sizes on CPU; our target is <= 15%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from d3llm_pipeline.decoding import DecodeSpec, decode
from d3llm_pipeline.models.adapter import HFDiffusionAdapter

DECODERS = {
    "vanilla": DecodeSpec(rule="vanilla", score="confidence", tokens_per_step=1),
    "threshold": DecodeSpec(rule="threshold", score="entropy", threshold=0.4),
    "d3llm": DecodeSpec(rule="d3llm", score="entropy", threshold=0.4),
    "d3llm+cache": DecodeSpec(rule="d3llm", score="entropy", threshold=0.4, kv_cache=True, cache_delay_iter=2),
}


class TimedAdapter(torch.nn.Module):
    """Wraps a DiffusionLM and accumulates the wall time spent inside its model calls."""

    def __init__(self, inner: HFDiffusionAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.mask_token_id, self.eos_token_id = inner.mask_token_id, inner.eos_token_id
        self.pad_token_id, self.shift_logits = inner.pad_token_id, inner.shift_logits
        self.forward_s, self.calls = 0.0, 0

    def _timed(self, fn, *args, **kwargs):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        self.forward_s += time.perf_counter() - start
        self.calls += 1
        return out

    def logits(self, input_ids, attention_mask=None, keep=None, **kwargs):  # kwargs: keep_count (no host sync)
        return self._timed(self.inner.logits, input_ids, attention_mask, keep, **kwargs)

    def forward_kv(self, *args, **kwargs):
        return self._timed(self.inner.forward_kv, *args, **kwargs)


def load_model(args) -> tuple[HFDiffusionAdapter, torch.Tensor]:
    from d3llm_pipeline.models.tiny import build_tiny_teacher, load_tiny_teacher
    from d3llm_pipeline.tasks import arith
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    problems = arith.ArithTask(n_train=1, n_val=1, n_test=args.prompts).problems("test")
    if args.teacher:
        if not (Path(args.teacher) / "config.json").is_file():
            raise SystemExit(f"--teacher {args.teacher} holds no checkpoint (run `make teacher` first)")
        lm, tok = load_tiny_teacher(args.teacher)
        prompts, _ = arith.encode(problems, tok, 24, 64)
        return lm, prompts
    tok = build_tokenizer()
    prompts, _ = arith.encode(problems, tok, 24, 64)
    lm = build_tiny_teacher(tok, max_positions=88, n_embd=args.n_embd, n_layer=args.n_layer, seed=0).eval()
    lm.model.resize_token_embeddings(args.vocab, mean_resizing=False)  # the rule's cost grows with V
    return lm, prompts


def measure(lm, prompts: torch.Tensor, name: str, spec: DecodeSpec, batch: int) -> dict:
    timed = TimedAdapter(lm)
    decode(timed, prompts[:batch], spec)  # warm-up
    timed.forward_s, timed.calls = 0.0, 0
    nfe = tokens = 0
    start = time.perf_counter()
    for lo in range(0, len(prompts), batch):
        result = decode(timed, prompts[lo : lo + batch], spec)
        nfe += int(result.nfe.sum())
        tokens += int(result.tokens.sum())
    wall = time.perf_counter() - start
    return {"decoder": name, "batch": batch, "vocab": lm.model.config.vocab_size, "n_embd": lm.model.config.n_embd,
            "entropy_dtype": spec.entropy_dtype, "prompts": len(prompts), "wall_s": round(wall, 3), "model_calls": timed.calls, "sample_forwards": nfe,
            "forward_s": round(timed.forward_s, 3), "forward_share": round(timed.forward_s / wall, 3),
            "outside_share": round(1 - timed.forward_s / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None, help="a trained tiny-teacher dir instead of the random model")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary of the random model")
    parser.add_argument("--n-embd", type=int, default=128, help="hidden size of the random model")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--entropy-dtype", default="float32", choices=("float32", "float64"),
                        help="decode.entropy_dtype of every decoder")
    parser.add_argument("--json", default=None, help="also write all rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm, prompts = load_model(args)
    rows = []
    for name in args.decoders.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            spec = dataclasses.replace(DECODERS[name], entropy_dtype=args.entropy_dtype)
            rows.append(measure(lm, prompts, name, spec, batch))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'decoder':<12} {'batch':>5} {'vocab':>6} {'wall s':>7} {'calls':>6} {'fwds':>6} {'in forward':>10} "
          f"{'outside':>8} {'tok/s':>7}")
    for r in rows:
        print(f"{r['decoder']:<12} {r['batch']:>5} {r['vocab']:>6} {r['wall_s']:>7.2f} {r['model_calls']:>6} "
              f"{r['sample_forwards']:>6} {r['forward_share']:>10.1%} {r['outside_share']:>8.1%} "
              f"{r['tokens_per_s']:>7.1f}")


if __name__ == "__main__":
    main()
