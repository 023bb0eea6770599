"""Word-level tokenizer for the built-in tasks, built locally (no download).

Token ids are positions in the vocabulary list (``arith.VOCAB`` by default), words are
split on whitespace, and nothing (no BOS/EOS) is added on encode. Decoding joins
tokens with single spaces, so ``decode(encode(text)) == text`` for normalised text.
Typical use::

    tok = build_tokenizer()
    tok("sue has 5 pens .")["input_ids"]     # [4, 24, 39, 12, 25]
    save_tokenizer(tok, "out/tokenizer")
    tok = load_tokenizer("out/tokenizer")     # local directory, works offline
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from d3llm_pipeline.tasks.arith import EOS, MASK, PAD, SEP, VOCAB


def build_tokenizer(vocab: list[str] = VOCAB) -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer whose ids are ``vocab.index(word)``.

    The vocabulary has no UNK token, so unknown words map to ``[PAD]``; callers that
    must not lose words (``arith.encode``) check the vocabulary themselves and raise.
    """
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocab contains duplicate words")
    missing = [t for t in (PAD, MASK, EOS, SEP) if t not in vocab]
    if missing:
        raise ValueError(f"vocab lacks special tokens {missing}")
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder on purpose: `tokenizers` then joins tokens with single spaces, the exact
    # inverse of WhitespaceSplit here (WordPiece/Metaspace decoders would glue "####").
    # No post-processor: encode must not add BOS/EOS around the prompt.
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        mask_token=MASK,
        eos_token=EOS,
        pad_token=PAD,
        sep_token=SEP,
        # The default clean-up would turn "pens ." into "pens." and break round trips.
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write the tokenizer files (``tokenizer.json`` etc.) into directory ``path``."""
    tok.save_pretrained(str(path))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer` from a local directory."""
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
