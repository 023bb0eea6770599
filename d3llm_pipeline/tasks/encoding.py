"""Word-level encoding of the synthetic tasks (arith, arith_long): specials, prompt / response layout, read-back.

    prompt_ids, response_ids = encode(problems, tokenizer, prompt_length=24, gen_length=64)
    text = decode_response(generated_ids[0], tokenizer)

Layout: a prompt region of ``prompt_length`` tokens (prompt, then ``[PAD]`` right-padding, so every prompt token
sits at a fixed position) followed by a generation region of ``gen_length`` tokens (response, then ``[EOS]`` filling
the rest, as in LLaDA, so the model learns to emit EOS padding). A real family's tokenizer declares its own PAD / EOS
ids (LLaDA / Dream: one shared id), and one with a chat template gets each prompt as one user turn through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

PAD = "[PAD]"
MASK = "[MASK]"
EOS = "[EOS]"
SEP = "[SEP]"


def _ids(text: str, vocab: dict[str, int], what: str) -> list[int]:
    try:
        return [vocab[w] for w in text.split()]
    except KeyError as e:
        raise ValueError(f"unknown word {e.args[0]!r} in {what}: {text!r}") from None


def special_id(tokenizer: PreTrainedTokenizerBase, vocab: dict[str, int], kind: str, word: str) -> int:
    """The tokenizer's ``<kind>_token_id`` when it has one, else the id of the task's word (``[PAD]``, ``[EOS]``).

    The task's own tokenizer has both and they agree; a real family's tokenizer names its specials its own way
    (LLaDA / Dream: PAD == EOS, one id), so the tokenizer's declared ids win.
    """
    declared = getattr(tokenizer, f"{kind}_token_id", None)
    return int(declared) if declared is not None else vocab[word]


def chat_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """``prompt`` as one user turn through the tokenizer's chat template (generation prompt appended)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode(
    problems: Sequence[Any],
    tokenizer: PreTrainedTokenizerBase,
    prompt_length: int = 24,
    gen_length: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode problems into ``(prompt_ids (N, prompt_length), response_ids (N, gen_length))``.

    Prompts are right-padded with ``[PAD]``; responses are followed by ``[EOS]`` up to
    ``gen_length`` (always at least one). Words are looked up directly in the
    tokenizer's vocabulary (the tokenizer is whitespace/word-level, so the ids are the
    same) to avoid per-call tokenizer overhead on 50k-problem splits. PAD / EOS are the
    tokenizer's own ids (``special_id``; one shared id for LLaDA / Dream); a tokenizer
    with a chat template gets each prompt as one user turn through it (``chat_prompt``).
    """
    import torch  # here, not at the top: config validation imports this module and must stay fast

    vocab = dict(tokenizer.get_vocab())
    pad_id, eos_id = special_id(tokenizer, vocab, "pad", PAD), special_id(tokenizer, vocab, "eos", EOS)
    template = getattr(tokenizer, "chat_template", None)
    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    for p in problems:
        pi = _ids(chat_prompt(p.prompt, tokenizer) if template else p.prompt, vocab, "prompt")
        ri = _ids(p.response, vocab, "response")
        if len(pi) > prompt_length:
            raise ValueError(f"prompt_length={prompt_length} too small for a {len(pi)}-token prompt")
        if len(ri) + 1 > gen_length:
            raise ValueError(
                f"gen_length={gen_length} too small for a {len(ri)}-token response plus one {EOS}"
            )
        prompts.append(pi + [pad_id] * (prompt_length - len(pi)))
        responses.append(ri + [eos_id] * (gen_length - len(ri)))
    if not problems:
        # torch.tensor([]) would lose the second dimension.
        return (
            torch.empty(0, prompt_length, dtype=torch.long),
            torch.empty(0, gen_length, dtype=torch.long),
        )
    return torch.tensor(prompts, dtype=torch.long), torch.tensor(responses, dtype=torch.long)


def decode_response(ids: Sequence[int] | torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> str:
    """Text of a generation region up to (excluding) the first ``[EOS]``.

    ``[MASK]``/``[PAD]`` are kept as their strings so that unfinished generations are
    visible (and grade as wrong). Ids outside the vocabulary raise ``ValueError``.
    """
    if hasattr(ids, "reshape"):  # a tensor (torch is imported lazily here)
        ids = ids.reshape(-1).tolist()
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    eos_id = special_id(tokenizer, dict(tokenizer.get_vocab()), "eos", EOS)
    words: list[str] = []
    for i, tok in zip(ids, tokens, strict=True):
        if tok is None:
            raise ValueError(f"token id {i} is outside the vocabulary")
        if int(i) == eos_id:  # by id: a real family's EOS is its own string (and PAD may share the id)
            break
        words.append(tok)
    return " ".join(words)
