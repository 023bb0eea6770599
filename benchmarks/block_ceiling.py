"""Is a decoder at its block ceiling? Forwards per sample against the blocks its response spans, from eval dirs.

    python benchmarks/block_ceiling.py outputs/runs/pipeline/<run>/sweeps/*_d3llm/3 [more eval dirs] [--json]

Multi-block decoding (decode=d3llm) opens at most one new block per forward (a block joins once the last one is
`block_add_threshold` decoded), so a response spanning k blocks of `decode.block_size` needs about k forwards
however confident the model is: TPF cannot exceed ~tokens / k. Single-block threshold decoding has the same
ceiling. When a model already decodes every sample in about k forwards, a better-distilled student cannot raise
TPF at that block size; only the accuracy it keeps at larger τ (or a larger block) can raise its AUP.

Reads each dir's metrics.json (decoder settings) and generations.jsonl (per sample: `tokens` before the first
EOS, `nfe`), and prints per dir: samples, mean blocks spanned, mean forwards, the share of samples decoded in at
most (blocks + 1) forwards, and TPF next to the ceiling tokens / blocks. Uses only the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def ceiling_row(eval_dir: Path) -> dict:
    """One eval dir's forwards-vs-blocks summary (see the module docstring)."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    block = int(metrics["decoder"]["block_size"])
    samples = [json.loads(line) for line in (eval_dir / "generations.jsonl").read_text().splitlines() if line]
    # A response of t tokens plus its EOS spans ceil((t + 1) / block) blocks (the EOS must be decoded too).
    blocks = [math.ceil((s["tokens"] + 1) / block) for s in samples]
    nfe = [s["nfe"] for s in samples]
    tokens = sum(s["tokens"] for s in samples)
    return {
        "dir": str(eval_dir), "model": metrics["model"]["name"], "decoder": metrics["decoder"].get("name"),
        "threshold": metrics["decoder"].get("threshold"), "block_size": block, "samples": len(samples),
        "accuracy": metrics["accuracy"], "mean_blocks": sum(blocks) / len(samples), "mean_nfe": sum(nfe) / len(samples),
        "within_one_forward_of_blocks": sum(n <= b + 1 for n, b in zip(nfe, blocks, strict=True)) / len(samples),
        "tpf": tokens / sum(nfe), "ceiling_tpf": tokens / sum(blocks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path, help="eval job dirs (metrics.json + generations.jsonl)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()
    rows = [ceiling_row(d) for d in args.eval_dirs]
    if args.json:
        print("\n".join(json.dumps(r) for r in rows))
        return
    print("| model | decoder | τ | accuracy | blocks / sample | forwards / sample | ≤ blocks + 1 forwards | TPF | "
          "ceiling TPF |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['decoder']} | {r['threshold']} | {100 * r['accuracy']:.1f}% | "
              f"{r['mean_blocks']:.2f} | {r['mean_nfe']:.2f} | {100 * r['within_one_forward_of_blocks']:.1f}% | "
              f"{r['tpf']:.2f} | {r['ceiling_tpf']:.2f} |")


if __name__ == "__main__":
    main()
