"""The embedded tiny teacher: a stock transformers GPT-2 in bidirectional mode, as a normal HF checkpoint.

Why GPT-2: on the arithmetic task a RoPE Llama backbone never learned to copy operands (21.6% after 1,500
steps, tiny_teacher.md), while learned absolute positions learn the copy quickly. `GPT2Config(is_causal=False)`
is exactly that recipe (learned positions, LayerNorm, GELU) as a stock bidirectional model with a KV cache.

    from d3llm_pipeline.models.tiny import build_tiny_teacher, load_tiny_teacher
    lm = build_tiny_teacher(arch, vocab_size=48, max_positions=88, tokenizer=tok)   # random init
    lm.model.save_pretrained(path); tok.save_pretrained(path)
    lm, tok = load_tiny_teacher(path)                                              # HFDiffusionAdapter
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from d3llm_pipeline.models.adapter import HFDiffusionAdapter

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_gpt2_config(
    vocab_size: int, max_positions: int, n_embd: int, n_layer: int, n_head: int, dropout: float,
    pad_token_id: int, eos_token_id: int, init_std: float = 0.02,
) -> GPT2Config:
    """A GPT-2 config with full bidirectional attention (every position sees every other)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=max_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        initializer_range=init_std,
        is_causal=False,  # the one change that makes GPT-2 a masked-diffusion (bidirectional) denoiser
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
    )


def adapter_for(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> HFDiffusionAdapter:
    """Tiny-teacher logits are aligned (token i predicted at output i): no shift, LLaDA-style."""
    return HFDiffusionAdapter(
        model,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        shift_logits=False,
    )


def build_tiny_teacher(
    tokenizer: PreTrainedTokenizerFast, max_positions: int, n_embd: int = 128, n_layer: int = 4,
    n_head: int = 4, dropout: float = 0.0, seed: int | None = None, init_std: float = 0.02,
    embed_init_std: float | None = None,
) -> HFDiffusionAdapter:
    """A randomly initialised tiny teacher (seeded when `seed` is given) wrapped in the adapter."""
    if seed is not None:
        torch.manual_seed(seed)
    config = tiny_gpt2_config(
        vocab_size=len(tokenizer), max_positions=max_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, dropout=dropout, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, init_std=init_std,
    )
    model = GPT2LMHeadModel(config)
    if embed_init_std is not None:
        # Large, nearly orthogonal token and position embeddings keep identity and position salient in the
        # residual stream, which is what copying operands and position-based lookups need (see README).
        with torch.no_grad():
            model.transformer.wte.weight.normal_(0.0, embed_init_std)
            model.transformer.wpe.weight.normal_(0.0, embed_init_std)
    return adapter_for(model, tokenizer)


def save_tiny_teacher(lm: HFDiffusionAdapter, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write an ordinary HF checkpoint directory (config.json, model.safetensors, tokenizer files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_tiny_teacher(
    path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu"
) -> tuple[HFDiffusionAdapter, PreTrainedTokenizerFast]:
    """Load a checkpoint written by `save_tiny_teacher` (local files only; never touches a hub)."""
    path = Path(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype])
    if getattr(model.config, "is_causal", True):
        raise ValueError(f"{path} holds a causal GPT-2 (config.is_causal is not False): not a diffusion teacher")
    model.to(device).eval()
    return adapter_for(model, tokenizer), tokenizer
