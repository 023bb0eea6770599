"""Memory per device of LoRA distillation, estimated from the model's architecture on the meta device (no weights).

    python -m d3llm_pipeline.models.memory --preset llada_8b_instruct --strategy fsdp --devices 8
    python -m d3llm_pipeline.models.memory --preset dream_7b_instruct --strategy all --batch 4 --gen 256 --json m.json

Counts, per device (GiB = 2**30 bytes):

* weights: every parameter of the teacher in `--dtype` (bf16: 2 bytes);
* LoRA: r x (in + out) per adapted linear (the family's targets), fp32 matrices + fp32 gradients + AdamW's two
  fp32 moments = 16 bytes per LoRA parameter;
* activations kept for backward, per token and layer, for a Llama-style layer with SDPA attention (flash /
  memory-efficient kernels keep no L x L scores), in the compute dtype (bf16 under bf16-mixed, fp32 on CPU):
  7 h + 3 h_kv + 4 I + 7 r elements (two RMSNorms' inputs and outputs, q/k/v before and after RoPE, the attention
  output, the MLP's gate / up / activation / product, each LoRA A output). With gradient checkpointing only each
  layer's input (h) is kept, plus one layer's activations while it is recomputed;
* logits: the loss's rows (the generated positions, both passes) x vocabulary x 10 bytes (bf16 logits, their fp32
  copy and its gradient).

`--batch` is the batch per device; with `--complementary` (the d3LLM recipes) each step forwards it twice (the
primary and complementary masks in one batch). Strategies: cpu (fp32 compute, one process), gpu (one device), ddp
(every device holds everything, its own batch), fsdp (weights, LoRA states sharded over the devices, gathered in
the compute dtype: `--fsdp-wrap layer` (trainer=fsdp's default) gathers one decoder layer at a time plus the
prefetched next, its LoRA matrices in units of their own, so the frozen units keep `--dtype` and get no
gradient; `none` (Lightning's default policy) the whole model, stored in float32 (one dtype per flattened unit,
training/strategies.py) with a whole-model gradient). Not counted: CUDA context (~0.5-1 GiB), allocator
fragmentation, NCCL buffers, temporaries inside a kernel. Estimates, not measurements.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch

GIB = 2**30
STRATEGIES = ("cpu", "gpu", "ddp", "fsdp")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_BYTES_PER_PARAM = 16  # fp32 matrix + fp32 gradient + AdamW exp_avg + exp_avg_sq
LOGIT_BYTES = 10  # bf16 logits + fp32 copy for the loss + its fp32 gradient


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know about a model."""

    params: int  # every parameter
    lora_params: int  # r x (in + out) summed over the adapted linears
    layers: int
    hidden: int
    kv_hidden: int  # key/value width (kv heads x head dim)
    intermediate: int
    vocab: int
    layer_params: int  # parameters of one decoder layer (what FSDP gathers at a time with layer wrapping)


def shape_of(model: torch.nn.Module, lora_r: int, targets: tuple[str, ...]) -> Shape:
    """Shape of a (meta-device) transformers Llama / Qwen2 model; LoRA counted on the `targets` linears."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    lora = sum(lora_r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and "lm_head" not in name)
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.0"))
    return Shape(params=sum(p.numel() for p in model.parameters()), lora_params=lora,
                 layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                 kv_hidden=getattr(cfg, "num_key_value_heads", heads) * head_dim,
                 intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
                 layer_params=sum(p.numel() for p in layer.parameters()))


@dataclass(frozen=True)
class Estimate:
    """Bytes per device."""

    strategy: str
    devices: int
    checkpointing: bool
    weights: float
    lora_states: float
    activations: float
    logits: float
    gathered: float  # FSDP: unsharded weights held while a unit computes
    total: float

    def gib(self) -> dict:
        """The same, with every byte count in GiB (2 decimals)."""
        return {k: round(v / GIB, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def teacher_shape(teacher_path: str, model_name: str, lora_r: int, targets: tuple[str, ...]) -> Shape:
    """The Shape of a distillation teacher without its weights: from its config.json when `teacher_path` is a local
    checkpoint dir, else, for a Hub id, from the preset named like `model_name` (llada-8b-instruct ->
    llada_8b_instruct), whose published architecture models/families/shapes.py holds (no download). Any other
    path is a mistake (a typo would otherwise be estimated as the preset)."""
    from pathlib import Path

    from d3llm_pipeline.errors import ConfigError
    from d3llm_pipeline.models.families import family_of
    from d3llm_pipeline.models.families.checkpoint import looks_like_hub_id
    from d3llm_pipeline.models.families.native import meta_model
    from d3llm_pipeline.models.families.shapes import meta_model_of, preset_names

    config_file = Path(teacher_path) / "config.json"
    if config_file.is_file():
        family = family_of(teacher_path)
        if family is None or family.build_config is None:
            raise ConfigError(f"stage.dry_run estimates LLaDA / Dream teachers; {config_file} is "
                              f"{'not one' if family is None else 'the tiny teacher (no estimate needed)'}")
        return shape_of(meta_model(family.build_config(json.loads(config_file.read_text())), "sdpa"), lora_r,
                        targets)
    if not looks_like_hub_id(teacher_path):  # a local path (mistyped, or a dir without a checkpoint)
        where = "holds no config.json" if Path(teacher_path).expanduser().exists() else "does not exist"
        raise ConfigError(f"stage.teacher_path={teacher_path} (model.path) {where}; point model.path at the "
                          "teacher's checkpoint dir, or at its Hub id (owner/name) to estimate from model.name's "
                          "published shape without downloading it")
    preset = model_name.replace("-", "_")
    if preset not in preset_names():
        raise ConfigError(f"stage.dry_run needs the teacher's shape: stage.teacher_path={teacher_path} has no "
                          f"config.json and model.name={model_name} is not a preset ({', '.join(preset_names())})")
    return shape_of(meta_model_of(preset), lora_r, targets)


def activation_elements_per_token_layer(s: Shape, lora_r: int) -> int:
    return 7 * s.hidden + 3 * s.kv_hidden + 4 * s.intermediate + 7 * lora_r


def estimate(s: Shape, lora_r: int, strategy: str, devices: int = 1, batch: int = 1, prompt: int = 256,
             gen: int = 256, dtype: str = "bfloat16", checkpointing: bool = True, complementary: bool = True,
             fsdp_wrap: str = "layer") -> Estimate:
    """Bytes per device of one training step (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    devices = 1 if strategy in ("cpu", "gpu") else devices
    compute_bytes = 4 if strategy == "cpu" else 2  # trainer=cpu runs 32-true, the GPU presets bf16-mixed
    shard = devices if strategy == "fsdp" else 1
    # FSDP without wrapping: one unit mixing frozen and fp32 LoRA weights, stored in float32 (training/strategies.py)
    stored_bytes = DTYPE_BYTES["float32"] if strategy == "fsdp" and fsdp_wrap == "none" else DTYPE_BYTES[dtype]
    weights = s.params * stored_bytes / shard
    lora_states = s.lora_params * LORA_BYTES_PER_PARAM / shard
    rows = batch * (2 if complementary else 1)
    tokens = rows * (prompt + gen)
    per_layer = activation_elements_per_token_layer(s, lora_r) * compute_bytes
    if checkpointing:
        activations = tokens * (s.layers * s.hidden * compute_bytes + per_layer)
    else:
        activations = tokens * s.layers * per_layer
    logits = batch * gen * s.vocab * LOGIT_BYTES  # the generated positions of both passes: each once
    gathered = 0.0
    if strategy == "fsdp":  # unsharded copies in the compute dtype, next to the shards
        gathered = (s.params if fsdp_wrap == "none" else 2 * s.layer_params) * compute_bytes  # layer + prefetch
        if fsdp_wrap == "none":  # one unit mixing frozen and LoRA weights: FSDP1 gives it a whole-model gradient,
            gathered += s.params * (compute_bytes + 4 / shard)  # unsharded in backward, then fp32 shards
    total = weights + lora_states + activations + logits + gathered
    return Estimate(strategy, devices, checkpointing, *(float(v) for v in
                                                        (weights, lora_states, activations, logits, gathered, total)))


def main(argv: list[str] | None = None) -> None:
    from d3llm_pipeline.models.families import get_family
    from d3llm_pipeline.models.families.shapes import meta_model_of, official_config, preset_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llada_8b_instruct", help=", ".join(preset_names()))
    parser.add_argument("--strategy", default="all", help=f"{' | '.join(STRATEGIES)} | all")
    parser.add_argument("--devices", type=int, default=8, help="ddp / fsdp world size")
    parser.add_argument("--batch", type=int, default=4, help="rows per device per step")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=256, help="d3LLM recipes: 256")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES),
                        help="the teacher's weights (model.dtype; fsdp without wrapping stores float32 shards)")
    parser.add_argument("--no-complementary", action="store_true", help="one pass per step instead of two")
    parser.add_argument("--fsdp-wrap", default="layer", choices=("layer", "none"), help="trainer.fsdp_wrap")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        family, _ = official_config(args.preset)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    if any(s not in STRATEGIES for s in strategies):
        raise SystemExit(f"error: --strategy must be one of {', '.join(STRATEGIES)} or all, got {args.strategy!r}")
    s = shape_of(meta_model_of(args.preset), args.lora_r, get_family(family).lora_targets)
    rows = [estimate(s, args.lora_r, strategy, args.devices, args.batch, args.prompt, args.gen, args.dtype, ckpt,
                     not args.no_complementary, args.fsdp_wrap).gib()
            for strategy in strategies for ckpt in (False, True)]
    print(f"{args.preset}: {s.params / 1e9:.2f} B parameters, LoRA r={args.lora_r}: {s.lora_params / 1e6:.1f} M; "
          f"batch {args.batch}/device x ({args.prompt}+{args.gen}) tokens, weights {args.dtype}")
    print(f"{'strategy':<8} {'devices':>7} {'ckpt':>5} {'weights':>8} {'LoRA+opt':>8} {'activ.':>8} {'logits':>7} "
          f"{'gathered':>8} {'total GiB':>9}")
    for r in rows:
        print(f"{r['strategy']:<8} {r['devices']:>7} {str(r['checkpointing']):>5} {r['weights']:>8.2f} "
              f"{r['lora_states']:>8.2f} {r['activations']:>8.2f} {r['logits']:>7.2f} "
              f"{r['gathered']:>8.2f} {r['total']:>9.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"preset": args.preset, "shape": asdict(s), "args": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
