"""Decode speed and overhead: how much of decoding time is the model forward vs the decode rule + bookkeeping.

    .venv/bin/python benchmarks/decode_speed.py                         # trained teacher if present, else random
    .venv/bin/python benchmarks/decode_speed.py --vocab 32000 --prompts 16 --threads 1

Prints one JSON line per (decoder, batch size) and a table: wall time, forward count, share of time inside the
model forward, tokens/s. With a random model and a large vocabulary the outputs are noise, but the cost of the
decode rule (softmax / entropy / selection over V logits) is exactly what it would be for a real model.
"""

from __future__ import annotations

import argparse
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
}


class TimedAdapter(torch.nn.Module):
    """Wraps a DiffusionLM and accumulates the wall time spent inside `logits` (CPU: synchronous)."""

    def __init__(self, inner: HFDiffusionAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.mask_token_id, self.eos_token_id = inner.mask_token_id, inner.eos_token_id
        self.pad_token_id, self.shift_logits = inner.pad_token_id, inner.shift_logits
        self.forward_s, self.calls = 0.0, 0

    def logits(self, input_ids, attention_mask=None):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.inner.logits(input_ids, attention_mask)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.forward_s += time.perf_counter() - start
        self.calls += 1
        return out


def load_model(args) -> tuple[HFDiffusionAdapter, torch.Tensor]:
    from d3llm_pipeline.models.tiny import build_tiny_teacher, load_tiny_teacher
    from d3llm_pipeline.tasks import arith
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    problems = arith.make_splits(arith.ArithConfig(n_train=1, n_val=1, n_test=args.prompts))["test"]
    if args.vocab is None and (Path(args.teacher) / "config.json").is_file():
        lm, tok = load_tiny_teacher(args.teacher)
        prompts, _ = arith.encode(problems, tok, 24, 64)
        return lm, prompts
    tok = build_tokenizer()
    prompts, _ = arith.encode(problems, tok, 24, 64)
    lm = build_tiny_teacher(tok, max_positions=88, seed=0).eval()
    if args.vocab is not None:  # a bigger output layer: the decode rule's cost grows with V
        lm.model.resize_token_embeddings(args.vocab)
    return lm, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="outputs/artifacts/teacher")
    parser.add_argument("--vocab", type=int, default=None, help="random model with this vocabulary size")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm, prompts = load_model(args)
    rows = []
    for name, spec in DECODERS.items():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            timed = TimedAdapter(lm)
            decode(timed, prompts[:batch], spec)  # warm-up
            timed.forward_s, timed.calls = 0.0, 0
            start = time.perf_counter()
            nfe = tokens = 0
            for lo in range(0, len(prompts), batch):
                result = decode(timed, prompts[lo : lo + batch], spec)
                nfe += int(result.nfe.sum())
                tokens += int(result.tokens.sum())
            wall = time.perf_counter() - start
            rows.append({
                "decoder": name, "batch": batch, "vocab": lm.model.config.vocab_size, "prompts": len(prompts),
                "wall_s": round(wall, 3), "model_calls": timed.calls, "sample_forwards": nfe,
                "forward_share": round(timed.forward_s / wall, 3), "tokens_per_s": round(tokens / wall, 1),
                "threads": args.threads, "load_avg_1m": round(os.getloadavg()[0], 2),
            })
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'decoder':<10} {'batch':>5} {'vocab':>6} {'wall s':>8} {'calls':>6} {'in forward':>10} {'tok/s':>8}")
    for r in rows:
        print(f"{r['decoder']:<10} {r['batch']:>5} {r['vocab']:>6} {r['wall_s']:>8.2f} {r['model_calls']:>6} "
              f"{r['forward_share']:>10.1%} {r['tokens_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
