"""LLaDA (GSAI-ML/LLaDA-8B-Instruct and its distilled students d3LLM_LLaDA, dParallel-LLaDA) as a native Llama.

An official LLaDA checkpoint is an OLMo-style module (`model_type: llada`, `model.transformer.blocks.N.*`). Its
block is exactly a Llama decoder layer without the causal mask: RMSNorm -> q/k/v (no bias, RoPE) -> attn_out, then
RMSNorm -> SwiGLU `ff_out(silu(ff_proj(x)) * up_proj(x))`. So it loads into `LlamaForCausalLM(is_causal=False)`
with renamed parameters; tests/integration/test_families.py checks the forward against the official code's outputs.

Ids (method.md §7): MASK 126336, EOS = PAD 126081 `<|endoftext|>`, end of turn `<|eot_id|>` 126348. Logits are
aligned (output i predicts token i).
"""

from __future__ import annotations

import re

from d3llm_pipeline.decoding.spec import DecodeDefaults
from d3llm_pipeline.models.families.base import SpecialIds
from d3llm_pipeline.models.families.official import OfficialFamily

# OLMo block names -> Llama decoder layer names (ff_proj is the gated half of the SwiGLU: silu(ff_proj) * up_proj)
BLOCK_NAMES = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
}
TOP_NAMES = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}
_BLOCK = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")
_TOP = re.compile(r"model\.transformer\.(\w+)\.(weight|bias)")
_NATIVE_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")

# config.json fields whose LLaDA meaning a Llama layer does not have: field -> the value we can load
REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "rope": True, "alibi": False, "include_bias": False,
            "include_qkv_bias": False, "attention_layer_norm": False, "input_emb_norm": False,
            "scale_logits": False, "bias_for_layer_norm": False, "block_group_size": 1}


def rename(name: str) -> str | None:
    """Official LLaDA parameter name -> LlamaForCausalLM name (None for a name LLaDA does not have)."""
    match = _BLOCK.fullmatch(name)
    if match and match.group(2) in BLOCK_NAMES:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{BLOCK_NAMES[module]}.{kind}"
    match = _TOP.fullmatch(name)
    if match and match.group(1) in TOP_NAMES:
        return f"{TOP_NAMES[match.group(1)]}.{match.group(2)}"
    return None


def official_name(native: str) -> str:
    """The inverse of `rename` (for messages about missing tensors)."""
    match = _NATIVE_LAYER.fullmatch(native)
    if match:
        layer, module, kind = match.groups()
        official = {v: k for k, v in BLOCK_NAMES.items()}.get(module, module)
        return f"model.transformer.blocks.{layer}.{official}.{kind}"
    module, _, kind = native.rpartition(".")
    official = {v: k for k, v in TOP_NAMES.items()}.get(module)
    return f"model.transformer.{official}.{kind}" if official else native


def build_config(config: dict):
    """LLaDA config.json -> a bidirectional LlamaConfig with the same shapes and numerics."""
    from transformers import LlamaConfig

    for field, value in REQUIRED.items():
        if field in config and config[field] != value:
            raise ValueError(f"LLaDA field {field}={config[field]!r} has no native Llama equivalent (we load "
                             f"{field}={value!r}); use model.backend=remote to run the checkpoint's own code")
    if config.get("activation_type", "silu") not in ("silu", "swiglu"):
        raise ValueError(f"LLaDA field activation_type={config['activation_type']!r} is not supported natively "
                         "(silu / swiglu); use model.backend=remote")
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    n_kv = config.get("n_kv_heads") or (1 if config.get("multi_query_attention") else n_heads)
    ids = FAMILY.special_ids(config)
    return LlamaConfig(
        vocab_size=int(config.get("embedding_size") or config["vocab_size"]),  # the embedding may be padded
        hidden_size=d_model,
        intermediate_size=int(config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model),
        num_hidden_layers=int(config["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(n_kv),
        hidden_act="silu",
        max_position_embeddings=int(config.get("max_sequence_length", 4096)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))},
        tie_word_embeddings=bool(config.get("weight_tying", False)),
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=ids.eos,
        pad_token_id=None,  # no nn.Embedding padding_idx: the official embedding trains every row (PAD = EOS)
        is_causal=False,  # a masked-diffusion denoiser: full bidirectional attention
        use_cache=False,
    )


FAMILY = OfficialFamily(
    name="llada",
    model_type="llada",
    display="LLaDA",
    shift_logits=False,  # logits at i predict token i (method.md §7)
    # Native names: all seven projections get adapters. The official code targets the same names on the OLMo
    # module, where only q/k/v/up_proj exist (method.md §4.3 pitfall) - a deliberate difference.
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    defaults=SpecialIds(mask=126336, eos=126081, pad=126081, eot=126348),
    build_config=build_config,
    rename=rename,
    official_name=official_name,
    positions=lambda config: config.get("max_sequence_length"),
    # d3llm_llada_generate_util: global minimum-entropy candidate always + every H <= τ (its `entropy > τ` drops);
    # its cached decoder stops scanning for blocks to cache at the first one still stabilising
    decode_defaults=DecodeDefaults(accept_global_best=True, inclusive_threshold=True,
                                   cache_scan_stops_at_stabilising=True),
    # GSAI-ML/LLaDA-8B-Instruct's config.json (8.02 B parameters)
    released_config={
        "model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
        "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False, "activation_type": "silu",
    },
    shape_fields=("n_layers", "d_model", "n_heads", "n_kv_heads", "mlp_hidden_size", ("vocab_size", "embedding_size")),
    special_tokens={"mask": "<|mdm_mask|>", "eos": "<|endoftext|>", "eot": "<|eot_id|>"},
)
