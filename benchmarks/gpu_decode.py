"""Decoding speed at 8B scale: tokens/s, step time / bare forward, peak memory and host syncs per forward.

    .venv/bin/python benchmarks/gpu_decode.py                       # on a GPU: LLaDA-8B and Dream-7B shapes, bf16
    .venv/bin/python benchmarks/gpu_decode.py --tiny                # CPU smoke run (< 1 min): same code, tiny shapes
    .venv/bin/python benchmarks/gpu_decode.py --presets llada --batch-sizes 1,8 --json out.json
    .venv/bin/python benchmarks/gpu_decode.py --official /src/d3LLM # also the official d3LLM decoder, same model
    .venv/bin/python benchmarks/gpu_decode.py --compile             # also every decoder with decode.compile=true

Builds a randomly initialised model of each preset's published architecture (models/families/shapes.py: LLaDA
32 layers x 4096, vocab 126,464; Dream 28 x 3584, vocab 152,064; no weights needed), prompts of `--prompt`
random tokens and decodes `--gen` tokens in blocks of `--block` with every decoder (vanilla, threshold, d3llm,
d3llm + KV cache) at each batch size. Per run it prints one JSON line and, at the end, a table:

* tokens/s: revealed tokens / wall time (a random model reveals about one token per forward: `--threshold 20`
  accepts every candidate instead, to time highly parallel steps);
* step / forward: wall time per decoder iteration over the time of a bare forward of the same batch (the whole
  sequence, logits for one block per row); the goal is <= 1.3 (a cached step forwards less, so it can be < 1);
* peak memory: torch.cuda.max_memory_allocated on a GPU (the process's peak RSS on CPU);
* host syncs per forward: counted in a separate, shorter run with decoding/sync_counter.py (goal <= 1).

`--max-forwards` caps the iterations of every decode (default 64: a step time needs no full generation).
`--compile` adds a `<decoder>+compile` row per decoder (decode.compile=true: torch.compile of the model forward,
dynamic shapes), timed after a warm-up decode that pays the compilation; its bare forward is compiled too, and its
host syncs are counted on the eager path (a dispatch mode cannot see inside compiled code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d3llm_pipeline.decoding import DecodeSpec, decode  # noqa: E402
from d3llm_pipeline.decoding.sync_counter import SyncCounter  # noqa: E402
from d3llm_pipeline.models.families.shapes import random_model  # noqa: E402

PRESETS = {"llada": "llada_8b_instruct", "dream": "dream_7b_instruct"}
TINY = {"layers": 2, "hidden": 64, "vocab": 4096, "prompt": 32, "gen": 64, "block": 16, "batch_sizes": "1,4",
        "max_forwards": 16, "dtype": "float32", "decode_repeats": 3}


def decoders(args) -> dict[str, DecodeSpec]:
    base = {"gen_length": args.gen, "block_size": args.block, "early_stop": False, "max_forwards": args.max_forwards}
    return {
        "vanilla": DecodeSpec(**base, rule="vanilla", score="confidence"),
        "threshold": DecodeSpec(**base, rule="threshold", threshold=args.threshold),
        "d3llm": DecodeSpec(**base, rule="d3llm", threshold=args.threshold),
        "d3llm+cache": DecodeSpec(**base, rule="d3llm", threshold=args.threshold, kv_cache=True, cache_delay_iter=2,
                                  refresh_interval=3),
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median wall seconds of fn() over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_forward_s(lm, x: torch.Tensor, prompt_len: int, block: int, repeats: int) -> float:
    """One forward of the whole sequence with logits for the first generated block of every row."""
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, prompt_len : prompt_len + block] = True
    with torch.no_grad():
        return timed(lambda: lm.logits(x, keep=keep, keep_count=x.shape[0] * block), repeats)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(lm, prompts: torch.Tensor, name: str, spec: DecodeSpec, args, device: torch.device) -> dict:
    prompt_len = prompts.shape[1]
    full = torch.cat([prompts, torch.full((len(prompts), spec.gen_length), lm.mask_token_id, device=device)], 1)
    forward = bare_forward_s(lm, full, prompt_len, spec.block_size, args.repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decode(lm, prompts, spec)  # warm-up
    walls = []
    for _ in range(args.decode_repeats):
        sync()
        start = time.perf_counter()
        result = decode(lm, prompts, spec)
        sync()
        walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    iterations = int(result.nfe.max())
    compiled, lm._compiled = lm._compiled, None  # counted on the eager path (see the module docstring)
    try:
        with SyncCounter(device) as syncs:
            counted = decode(lm, prompts, dataclasses.replace(spec, compile=False, max_forwards=min(
                args.sync_forwards, spec.forward_cap)))
    finally:
        object.__setattr__(lm, "_compiled", compiled)
    revealed = int((result.unmask_step >= 0).sum())
    return {"preset": args.preset_name, "decoder": name, "batch": len(prompts), "dtype": args.dtype,
            "device": str(device), "prompt": prompt_len, "gen": spec.gen_length, "block": spec.block_size,
            "iterations": iterations, "revealed_tokens": revealed, "wall_s": round(wall, 4),
            "tokens_per_s": round(revealed / wall, 1), "step_ms": round(1000 * wall / iterations, 3),
            "bare_forward_ms": round(1000 * forward, 3), "step_over_forward": round(wall / iterations / forward, 3),
            "peak_gib": round(peak_bytes(device) / 2**30, 2),
            "syncs_per_forward": round(syncs.total / max(1, int(counted.nfe.max())), 3)}


def official_decoder(path: str):
    """The official d3LLM multi-block decoder from a clone of hao-ai-lab/d3LLM (a hook; one line if missing)."""
    root = Path(path)
    found = sorted(root.rglob("d3llm_llada_generate_util.py")) if root.is_dir() else []
    if not found:
        raise SystemExit(f"error: --official {path}: no d3llm_llada_generate_util.py under it; pass a clone of "
                         "hao-ai-lab/d3LLM (its d3llm/d3llm_LLaDA dir holds the decoder)")
    sys.path.insert(0, str(found[0].parent))
    try:
        import d3llm_llada_generate_util as official  # noqa: PLC0415
    except Exception as err:  # noqa: BLE001 - any import failure is one line
        raise SystemExit(f"error: --official {path}: importing {found[0]} failed: {type(err).__name__}: {err}") from err
    return official.generate_multi_block


def run_official(fn, lm, prompts, args) -> dict:
    """Times the official decoder on the same (LLaDA-shaped) model, batch 1 as it is written."""
    import inspect

    kwargs = {"gen_length": args.gen, "block_length": args.block, "threshold": args.threshold,
              "mask_id": lm.mask_token_id, "temperature": 0.0, "block_add_threshold": 0.1,
              "decoded_token_threshold": 0.95, "steps": args.gen}
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    start = time.perf_counter()
    with SyncCounter(prompts.device) as syncs:
        out = fn(lm.model, prompts[:1], **kwargs)
    sync()
    wall = time.perf_counter() - start
    nfe = out[1] if isinstance(out, tuple) else None
    return {"preset": args.preset_name, "decoder": "official d3llm", "batch": 1, "wall_s": round(wall, 3),
            "tokens_per_s": round(args.gen / wall, 1), "nfe": nfe, "host_syncs": syncs.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="llada,dream", help="comma list of llada, dream")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke defaults (options given win): " + json.dumps(TINY))
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--decoders", default="vanilla,threshold,d3llm,d3llm+cache")
    parser.add_argument("--threshold", type=float, default=0.5, help="entropy τ of threshold / d3llm")
    parser.add_argument("--max-forwards", type=int, default=64, help="iterations per decode (null: 2 x gen)")
    parser.add_argument("--sync-forwards", type=int, default=8, help="iterations of the sync-counting run")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="bare-forward timings (median)")
    parser.add_argument("--decode-repeats", type=int, default=1, help="timed decodes per row (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--official", default=None, help="a clone of hao-ai-lab/d3LLM: time its decoder too")
    parser.add_argument("--compile", action="store_true", help="also time every decoder with decode.compile=true")
    parser.add_argument("--json", default=None, help="also write all rows to this file")
    args = parser.parse_args()
    if args.tiny:  # the tiny shapes for every option left at its default
        for key, value in TINY.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    official = official_decoder(args.official) if args.official else None
    rows = []
    for short in args.presets.split(","):
        if short not in PRESETS:
            raise SystemExit(f"error: --presets {short!r}: choose from {', '.join(PRESETS)}")
        args.preset_name = short
        lm = random_model(PRESETS[short], dtype=args.dtype, device=device, layers=args.layers, hidden=args.hidden,
                          vocab=args.vocab, heads=args.heads)
        vocab = lm.model.config.vocab_size
        n_special_free = min(vocab - 3, 100_000)  # random prompt ids below the special ids
        gen = torch.Generator().manual_seed(0)
        all_prompts = torch.randint(0, n_special_free, (max(int(b) for b in args.batch_sizes.split(",")),
                                                        args.prompt), generator=gen).to(device)
        for compiled in (False, True) if args.compile else (False,):
            if compiled:
                lm.compile_forward()  # every later no-grad forward, bare ones included
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                for name in args.decoders.split(","):
                    spec = dataclasses.replace(decoders(args)[name], compile=compiled)
                    rows.append(measure(lm, all_prompts[:batch], name + "+compile" * compiled, spec, args, device))
                    print(json.dumps(rows[-1]), flush=True)
        if official is not None and short == "llada":
            rows.append(run_official(official, lm, all_prompts, args))
            print(json.dumps(rows[-1]), flush=True)
        del lm
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'preset':<6} {'decoder':<20} {'batch':>5} {'tok/s':>9} {'step ms':>9} {'fwd ms':>8} {'step/fwd':>8} "
          f"{'peak GiB':>8} {'syncs/fwd':>9}")
    for r in rows:
        if "step_ms" in r:
            print(f"{r['preset']:<6} {r['decoder']:<20} {r['batch']:>5} {r['tokens_per_s']:>9.1f} {r['step_ms']:>9.2f} "
                  f"{r['bare_forward_ms']:>8.2f} {r['step_over_forward']:>8.2f} {r['peak_gib']:>8.2f} "
                  f"{r['syncs_per_forward']:>9.2f}")


if __name__ == "__main__":
    main()
