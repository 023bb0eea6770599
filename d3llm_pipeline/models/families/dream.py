"""Dream (Dream-org/Dream-v0-Instruct-7B and its distilled student d3LLM_Dream) as a native Qwen2.

An official Dream checkpoint (`model_type: Dream`) already uses Qwen2's parameter names (q/k/v biases, untied
`lm_head`); its network is Qwen2 without the causal mask, so it loads into `Qwen2ForCausalLM(is_causal=False)`
with no renaming. Dream was adapted from an autoregressive Qwen2.5: output i predicts token i+1, so the adapter
shifts its logits right by one (`shift_logits`; method.md §7).

Ids (method.md §7): MASK 151666, EOS = PAD = BOS 151643 `<|endoftext|>`, end of turn `<|im_end|>` 151645.
"""

from __future__ import annotations

from d3llm_pipeline.decoding.spec import DecodeDefaults
from d3llm_pipeline.models.families.base import SpecialIds
from d3llm_pipeline.models.families.official import OfficialFamily

# Dream config.json keys copied as they are into Qwen2Config (same meaning, same name)
SAME_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
             "use_sliding_window", "sliding_window", "max_window_layers")


def rename(name: str) -> str | None:
    """Dream's names are already Qwen2's."""
    return name


def build_config(config: dict):
    """Dream config.json -> a bidirectional Qwen2Config with the same shapes and numerics."""
    from transformers import Qwen2Config

    if config.get("rope_scaling"):
        raise ValueError(f"Dream field rope_scaling={config['rope_scaling']!r} is not supported natively (the released "
                         "checkpoints have none); use model.backend=remote")
    if config.get("use_sliding_window"):
        raise ValueError("Dream field use_sliding_window=true is not supported natively (a bidirectional denoiser "
                         "attends to the whole sequence); use model.backend=remote")
    ids = FAMILY.special_ids(config)
    return Qwen2Config(
        **{k: config[k] for k in SAME_KEYS if k in config},
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))},
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=ids.eos,
        pad_token_id=None,  # no nn.Embedding padding_idx: the official embedding trains every row (PAD = EOS)
        is_causal=False,  # a masked-diffusion denoiser: full bidirectional attention
        use_cache=False,
    )


FAMILY = OfficialFamily(
    name="dream",
    model_type="Dream",
    display="Dream",
    shift_logits=True,  # the prediction for token i is output i-1 (method.md §7)
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    defaults=SpecialIds(mask=151666, eos=151643, pad=151643, eot=151645),
    build_config=build_config,
    rename=rename,
    positions=lambda config: config.get("max_position_embeddings"),
    # d3llm_dream_generate_util: H < τ only (no global-best rule); its cached decoder's scan does not stop at a
    # stabilising block, so later complete blocks are stamped (and can stabilise) at once
    decode_defaults=DecodeDefaults(accept_global_best=False, inclusive_threshold=False,
                                   cache_scan_stops_at_stabilising=False),
    # Dream-org/Dream-v0-Instruct-7B's config.json (a Qwen2.5-7B layout)
    released_config={
        "model_type": "Dream", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
        "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064, "max_position_embeddings": 131072,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
    },
    shape_fields=("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", ("vocab_size",)),
    special_tokens={"mask": "<|mask|>", "eos": "<|endoftext|>", "eot": "<|im_end|>"},
)
