"""Measured memory of one LoRA distillation step on an 8B-shaped model, next to models/memory.py's estimate.

    .venv/bin/python benchmarks/distill_memory.py                      # on a GPU: LLaDA-8B shape, bf16, r=256
    .venv/bin/python benchmarks/distill_memory.py --preset dream --batch 2 --no-checkpointing
    .venv/bin/python benchmarks/distill_memory.py --tiny               # CPU smoke run (seconds): same code, tiny shapes

Builds a random model of the preset's published architecture (models/families/shapes.py) in `--dtype`, wraps it
with the family's LoRA targets at rank `--lora-r` (models/lora.py lora_student, as stage=distill does), and runs
`--steps` optimiser steps of the real distillation loss (training/distill_module.py compute_loss: primary and
complementary passes in one forward, logits only at the masked positions) under bf16 autocast, as Lightning's
bf16-mixed does, with AdamW on the LoRA matrices. Prints one JSON line with the peak memory
(torch.cuda.max_memory_allocated; the process's peak RSS on CPU, which counts everything the process touched, so it
is no check of the estimate there) and the estimate of `python -m d3llm_pipeline.models.memory --strategy gpu` for
the same shapes (weights, LoRA + optimizer, activations, logits).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d3llm_pipeline.config.schema import DistillConfig, LoraConfig  # noqa: E402
from d3llm_pipeline.models.families import get_family  # noqa: E402
from d3llm_pipeline.models.families.shapes import meta_model_of, official_config, random_model  # noqa: E402
from d3llm_pipeline.models.lora import lora_student  # noqa: E402
from d3llm_pipeline.models.memory import GIB, estimate, shape_of  # noqa: E402
from d3llm_pipeline.training.distill_module import DistillModule  # noqa: E402

PRESETS = {"llada": "llada_8b_instruct", "dream": "dream_7b_instruct"}
TINY = {"layers": 2, "hidden": 64, "vocab": 4096, "prompt": 32, "gen": 64, "lora_r": 8, "dtype": "float32"}


def random_batch(lm, batch: int, prompt: int, gen: int, vocab: int, generator: torch.Generator) -> dict:
    """Random prompts and responses (EOS over the last eighth) with a random reveal order per row."""
    targets = torch.randint(0, min(vocab - 3, 100_000), (batch, gen), generator=generator)
    targets[:, gen - gen // 8:] = lm.eos_token_id
    steps = torch.stack([torch.randperm(gen, generator=generator) for _ in range(batch)])
    return {"prompt_ids": torch.randint(0, min(vocab - 3, 100_000), (batch, prompt), generator=generator),
            "targets": targets, "unmask_step": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llada", choices=sorted(PRESETS))
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke defaults (options given win): " + json.dumps(TINY))
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--batch", type=int, default=4, help="rows per device (the recipe: 32 over 8 GPUs)")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", help="the frozen teacher's weights (model.dtype)")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep every layer's activations")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps (AdamW's states appear at the first)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()
    if args.tiny:
        for key, value in TINY.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    device = torch.device(args.device)
    preset, shape_args = PRESETS[args.preset], {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab}
    family = get_family(official_config(preset, **shape_args)[0])
    checkpointing = not args.no_checkpointing
    teacher = random_model(preset, dtype=args.dtype, device=device, **shape_args)
    student = lora_student(teacher, family, LoraConfig(r=args.lora_r, alpha=args.lora_r), checkpointing)
    module = DistillModule(student, DistillConfig(), lr=1e-5, weight_decay=0.0, warmup_steps=0, max_steps=args.steps,
                           min_lr_ratio=1.0, seed=0, val_every=10**9)
    module.mask_ratio_progress, module.window = 0.5, args.gen  # one window over the whole region: the most rows
    optimizer = module.configure_optimizers()["optimizer"]  # the stage's AdamW (state for the LoRA matrices only)
    vocab = teacher.model.config.vocab_size
    batch = {k: v.to(device) for k, v in random_batch(student, args.batch, args.prompt, args.gen, vocab,
                                                      torch.Generator().manual_seed(0)).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # bf16-mixed on a GPU (the GPU trainer presets), float32 on the CPU (trainer=cpu is 32-true)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    walls = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with autocast:
            terms, _, _ = module.compute_loss(batch)
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = shape_of(meta_model_of(preset, **shape_args), args.lora_r, tuple(family.lora_targets))
    est = estimate(shape, args.lora_r, "gpu" if device.type == "cuda" else "cpu", 1, args.batch, args.prompt, args.gen,
                   args.dtype, checkpointing, True)
    row = {"preset": args.preset, "device": str(device), "dtype": args.dtype, "batch": args.batch,
           "prompt": args.prompt, "gen": args.gen, "lora_r": args.lora_r, "checkpointing": checkpointing,
           "parameters": shape.params, "lora_parameters": shape.lora_params, "loss": round(terms["loss"].item(), 4),
           "step_s": [round(w, 3) for w in walls], "peak_gib": round(peak / GIB, 2),
           "estimate_gib": est.gib(), "measured_over_estimate": round(peak / est.total, 3)}
    print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
