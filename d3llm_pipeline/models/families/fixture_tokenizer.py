"""A word-level tokenizer for a real-family checkpoint that ships none (the official-format test fixtures).

    python -m d3llm_pipeline.models.families.fixture_tokenizer tests/fixtures/official/llada_tiny out/llada_tiny
    python -m d3llm_pipeline.models.families.fixture_tokenizer <src> <dst> --words-from gsm8k_test.jsonl

copies the checkpoint dir (`<src>` is never written) and writes into the copy a `tokenizers` WordLevel tokenizer
(wrapped in PreTrainedTokenizerFast, like tasks/tokenizer.py) that holds the arith task's words plus the family's
special tokens AT THE FAMILY'S IDS (config.json / families/base.py SpecialIds), inside the model's vocab size.
`--words-from <file>` adds every whitespace-separated word of a text / JSONL file (benchmark prompts, so they
encode to words rather than to the unknown token, which is EOS). Every other id gets a filler token `<|id_N|>`, so whatever a random-weight model generates decodes to some token
(decode_response raises on ids outside the vocabulary) and never to an arith word.

PAD: both official families use PAD == EOS, so the tokenizer's pad token is the EOS token (one id, one string).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from d3llm_pipeline.models.families import detect_family
from d3llm_pipeline.tasks.arith import EOS, MASK, PAD, VOCAB


def build_fixture_tokenizer(config: dict, extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The tokenizer for a checkpoint's config.json (a dict): arith words at ids 0.., specials at the family's ids."""
    family = detect_family(config)
    if family is None or not family.special_tokens:
        raise ValueError(f"config.json model_type {config.get('model_type')!r} is not an official LLaDA / Dream one")
    ids = family.special_ids(config)
    if ids.pad != ids.eos:  # both official families share the id; a separate PAD would need its own string
        raise ValueError(f"{family.name}: PAD {ids.pad} != EOS {ids.eos}; this helper assumes PAD == EOS")
    names = family.special_tokens  # the official tokenizer's strings (its tokenizer_config.json)
    size = int(config["vocab_size"])
    special = {names["mask"]: ids.mask, names["eos"]: ids.eos}
    if ids.eot is not None:
        special[names["eot"]] = ids.eot
    if max(special.values()) >= size:
        raise ValueError(f"special ids {special} do not fit vocab_size {size}")
    vocab = dict(special)
    words = [w for w in VOCAB if w not in (PAD, MASK, EOS)]  # the arith specials are the family's own tokens here
    words += sorted({w for w in extra_words if w not in special and w not in words})
    if len(words) + len(special) > size:
        raise ValueError(f"{len(words)} words and {len(special)} special tokens do not fit vocab_size {size}")
    free = (i for i in range(size) if i not in special.values())
    for word in words:
        vocab[word] = next(free)
    for i in free:
        vocab[f"<|id_{i}|>"] = i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=names["eos"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = [names["eot"]] if ids.eot is not None else []
    # No decoder / post-processor and no clean-up, as tasks/tokenizer.py: exact word round trips, no BOS/EOS added.
    return PreTrainedTokenizerFast(tokenizer_object=core, mask_token=names["mask"], eos_token=names["eos"],
                                   pad_token=names["eos"], additional_special_tokens=extra,
                                   clean_up_tokenization_spaces=False)


def words_of(path: str | Path) -> tuple[str, ...]:
    """Every whitespace-separated word of a text file (for JSONL: of its rows' string values, decoded)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        text = " ".join(str(v) for row in rows for v in row.values())
    return tuple(text.split())


def prepare_fixture(src: str | Path, dst: str | Path, chat_template: str | None = None,
                    extra_words: tuple[str, ...] = ()) -> Path:
    """Copy checkpoint dir `src` to `dst` (replacing an earlier copy of ours, never anything else) and save the fixture tokenizer into the copy.

    `chat_template` (a Jinja string) is stored in tokenizer_config.json; the arith task then encodes prompts
    through it (tasks/arith.py encode). The reference/ subdir (decode ground truth) is not copied.
    """
    from d3llm_pipeline import ownership

    src, dst = Path(src), Path(dst)
    with ownership.staged(dst, "fixture", "dst") as tmp:  # replaces only a fixture copy of ours
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("reference"), dirs_exist_ok=True)
        for f in tmp.iterdir():  # the shared fixture is read-only; the copy must be writable (reruns replace it)
            f.chmod(0o644)
        tmp.chmod(0o755)
        tok = build_fixture_tokenizer(json.loads((tmp / "config.json").read_text()), extra_words)
        if chat_template is not None:
            tok.chat_template = chat_template
        tok.save_pretrained(str(tmp))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="official-format checkpoint dir without a tokenizer (read only)")
    parser.add_argument("dst", help="where the copy with the tokenizer goes (an earlier copy there is replaced)")
    parser.add_argument("--words-from", action="append", default=[], metavar="FILE",
                        help="also add every word of this text / JSONL file (repeatable)")
    args = parser.parse_args(argv)
    words = tuple(w for f in args.words_from for w in words_of(f))
    print(prepare_fixture(args.src, args.dst, extra_words=words))


if __name__ == "__main__":
    main()
