"""The built-in synthetic reasoning task "arith": a mini-GSM generated from a seed.

Each problem is a short word problem over a running total that stays within 0..9,
answered by a chain of thought of single-digit steps and a final ``#### N``::

    prompt:   sue has 5 pens . loses 4 . buys 3 . gives 1 . how many ? [SEP]
    response: 5 - 4 = 1 , 1 + 3 = 4 , 4 - 1 = 3 #### 3

Everything is word-level over the fixed ``VOCAB`` (specials have ids 0..3), so the
task needs no downloaded tokenizer. Typical use::

    cfg = ArithConfig(seed=0)
    splits = make_splits(cfg)                      # {"train", "validation", "test"}
    tok = build_tokenizer()                        # d3llm_pipeline.tasks.tokenizer
    prompt_ids, response_ids = encode(splits["test"], tok, cfg.prompt_length, cfg.gen_length)
    text = decode_response(generated_ids[0], tok)
    grade(text, splits["test"][0].answer)

Model layout: a prompt region of ``prompt_length`` tokens (prompt, then ``[PAD]``
right-padding, so every prompt token sits at a fixed position) followed by a
generation region of ``gen_length`` tokens (response, then ``[EOS]`` filling the rest,
as in LLaDA, so the model learns to emit EOS padding).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

PAD = "[PAD]"
MASK = "[MASK]"
EOS = "[EOS]"
SEP = "[SEP]"

NAMES = ("sue", "tom", "ann", "bob", "kim", "joe", "eva", "max")
ITEMS = ("pens", "apples", "cards", "coins", "books", "stamps")
PLUS_VERBS = ("buys", "gets", "finds")
MINUS_VERBS = ("loses", "gives", "sells")
WORDS = ("has", ".", "how", "many", "?", "+", "-", "=", ",", "####")
DIGITS = tuple(str(d) for d in range(10))

# Fixed order: ids are list positions, so they must never be reshuffled.
VOCAB: list[str] = [PAD, MASK, EOS, SEP, *NAMES, *ITEMS, *PLUS_VERBS, *MINUS_VERBS, *WORDS, *DIGITS]

MAX_VALUE = 9  # the running total (and every amount) is a single digit token
_MAX_STALL = 10_000  # consecutive rejected draws before a split is declared impossible


@dataclass(frozen=True)
class ArithConfig:
    """Parameters of the task; every split is a pure function of these."""

    seed: int = 0
    prompt_length: int = 24
    gen_length: int = 64
    min_steps: int = 3
    max_steps: int = 5
    n_train: int = 50000
    n_val: int = 200
    n_test: int = 1000
    problems_per_sample: int = 1  # > 1: task=arith_long, k independent problems per sample (tasks/arith_long.py)

    def __post_init__(self) -> None:
        # Fail at config time rather than midway through encoding a split.
        _check_steps(self.min_steps, self.max_steps)
        if self.problems_per_sample < 1:
            raise ValueError(f"problems_per_sample must be >= 1, got {self.problems_per_sample}")
        need = sample_prompt_tokens(self.max_steps, self.problems_per_sample)
        if need > self.prompt_length:
            raise ValueError(f"prompt_length={self.prompt_length} cannot hold a {self.max_steps}-step prompt "
                             f"({need} tokens)")
        need = sample_response_tokens(self.max_steps, self.problems_per_sample) + 1
        if need > self.gen_length:
            raise ValueError(f"gen_length={self.gen_length} cannot hold a {self.max_steps}-step response plus one "
                             f"{EOS} ({need} tokens)")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Problem:
    """One problem: ``prompt`` ends with `` [SEP]``; ``response`` carries no EOS."""

    prompt: str
    response: str
    answer: int
    answers: tuple[int, ...] = ()  # every sub-answer of an arith_long sample (empty: one problem, `answer`)


def max_prompt_tokens(n_steps: int) -> int:
    """Prompt length in tokens: ``name has v item .`` + 3 per step + ``how many ? [SEP]``."""
    return 5 + 3 * n_steps + 4


def max_response_tokens(n_steps: int) -> int:
    """Response length in tokens: 5 per step (``a op b = c``), 1 per ``,`` separator, 2 for ``#### N``."""
    return 5 * n_steps + (n_steps - 1) + 2


def sample_prompt_tokens(max_steps: int, k: int = 1) -> int:
    """The longest prompt of a sample of k problems (arith_long pads each sub-prompt to a fixed slot)."""
    if k == 1:
        return max_prompt_tokens(max_steps)
    from d3llm_pipeline.tasks import arith_long

    return arith_long.prompt_tokens(max_steps, k)


def sample_response_tokens(max_steps: int, k: int = 1) -> int:
    return max_response_tokens(max_steps) * k


def _check_steps(min_steps: int, max_steps: int) -> None:
    if min_steps < 1:
        raise ValueError(f"min_steps must be >= 1, got {min_steps}")
    if max_steps < min_steps:
        raise ValueError(f"max_steps ({max_steps}) must be >= min_steps ({min_steps})")


def generate_problem(rng: random.Random, min_steps: int = 3, max_steps: int = 5) -> Problem:
    """Draw one problem from ``rng``; the total stays within 0..9 after every step."""
    _check_steps(min_steps, max_steps)
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    total = rng.randint(2, MAX_VALUE)
    prompt = [f"{name} has {total} {item} ."]
    steps = []
    for _ in range(rng.randint(min_steps, max_steps)):
        # From total t there are exactly 9 valid (direction, amount) pairs:
        # plus 1..9-t and minus 1..t. Index them 0..8 and draw one uniformly.
        k = rng.randrange(MAX_VALUE)
        room = MAX_VALUE - total
        if k < room:
            amount, op, verbs, new = k + 1, "+", PLUS_VERBS, total + k + 1
        else:
            amount = k - room + 1
            op, verbs, new = "-", MINUS_VERBS, total - amount
        prompt.append(f"{rng.choice(verbs)} {amount} .")
        steps.append(f"{total} {op} {amount} = {new}")
        total = new
    prompt.append(f"how many ? {SEP}")
    response = " , ".join(steps) + f" #### {total}"
    return Problem(prompt=" ".join(prompt), response=response, answer=total)


def _draw_unique(
    rng: random.Random,
    n: int,
    cfg: ArithConfig,
    reject: Callable[[Problem], bool],
    split: str,
) -> list[Problem]:
    """Draw ``n`` problems, redrawing any that ``reject`` flags."""
    out: list[Problem] = []
    # Realistic rejection rates are a few percent, so a long run of consecutive
    # rejections means the problem space is exhausted; stop instead of looping forever.
    stalled = 0
    if cfg.problems_per_sample > 1:
        from d3llm_pipeline.tasks.arith_long import generate_composite

        def draw(r: random.Random) -> Problem:
            return generate_composite(r, cfg.min_steps, cfg.max_steps, cfg.problems_per_sample)
    else:
        def draw(r: random.Random) -> Problem:
            return generate_problem(r, cfg.min_steps, cfg.max_steps)
    while len(out) < n:
        p = draw(rng)
        if reject(p):
            stalled += 1
            if stalled >= _MAX_STALL:
                raise ValueError(
                    f"could not draw {n} distinct {split} problems with steps "
                    f"{cfg.min_steps}..{cfg.max_steps}; the problem space is too small"
                )
        else:
            out.append(p)
            stalled = 0
    return out


def make_splits(cfg: ArithConfig) -> dict[str, list[Problem]]:
    """Deterministic train/validation/test splits from ``cfg.seed``.

    Held-out splits are drawn first so that train can be filtered against them: no
    train problem's response (its chain of thought) appears in validation or test, so
    held-out accuracy measures generalisation rather than recall of a memorised chain.
    """
    # String seeds are hashed with SHA-512 by `random`, so the streams are stable across
    # processes (unaffected by PYTHONHASHSEED) and independent of one another.
    test_rng = random.Random(f"arith-{cfg.seed}-test")
    val_rng = random.Random(f"arith-{cfg.seed}-validation")
    train_rng = random.Random(f"arith-{cfg.seed}-train")

    test_prompts: set[str] = set()
    test_responses: set[str] = set()

    def reject_test(p: Problem) -> bool:
        if p.prompt in test_prompts:
            return True
        test_prompts.add(p.prompt)
        test_responses.add(p.response)
        return False

    test = _draw_unique(test_rng, cfg.n_test, cfg, reject_test, "test")

    val_prompts: set[str] = set()
    val_responses: set[str] = set()

    def reject_val(p: Problem) -> bool:
        if p.response in test_responses or p.prompt in val_prompts:
            return True
        val_prompts.add(p.prompt)
        val_responses.add(p.response)
        return False

    validation = _draw_unique(val_rng, cfg.n_val, cfg, reject_val, "validation")

    held_out = test_responses | val_responses
    train = _draw_unique(train_rng, cfg.n_train, cfg, lambda p: p.response in held_out, "train")
    return {"train": train, "validation": validation, "test": test}


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
    problems: Sequence[Problem],
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


INT_PATTERN = _INT = re.compile(r"-?[0-9]+")
_STEP = re.compile(r"([0-9]+)\s*([+-])\s*([0-9]+)\s*=\s*([0-9]+)")


def extract_answer(text: str) -> int | None:
    """The integer right after the LAST ``####``, or None if absent or not an integer."""
    if "####" not in text:
        return None
    words = text.rsplit("####", 1)[1].split()
    # A strict pattern (not int()) so that e.g. "1_0" or "[MASK]" do not count.
    if not words or not _INT.fullmatch(words[0]):
        return None
    return int(words[0])


def grade(output_text: str, answer: int) -> bool:
    """True when the final answer in ``output_text`` equals ``answer``."""
    return extract_answer(output_text) == answer


def chain_correct(output_text: str) -> bool:
    """True when the chain before the first ``####`` is non-empty and every
    ``,``-separated step has the form ``a op b = c`` with correct arithmetic.

    A step that does not parse (e.g. still contains ``[MASK]``) counts as wrong, so an
    empty or garbled chain is not "correct". Continuity between steps is not checked.
    """
    chain = output_text.split("####", 1)[0]
    steps = [s.strip() for s in chain.split(",")]
    if not steps or steps == [""]:
        return False
    for step in steps:
        m = _STEP.fullmatch(step)
        if m is None:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if (a + b if op == "+" else a - b) != c:
            return False
    return True


def grade_problem(output_text: str, problem: Problem) -> bool:
    """`grade` for one problem, or every sub-answer in order for an arith_long sample."""
    if len(problem.answers) > 1:
        from d3llm_pipeline.tasks.arith_long import grade_all

        return grade_all(output_text, problem.answers)
    return grade(output_text, problem.answer)


def chains_ok(output_text: str, problem: Problem) -> bool:
    """`chain_correct`, or every sub-chain for an arith_long sample."""
    if len(problem.answers) > 1:
        from d3llm_pipeline.tasks.arith_long import chains_correct

        return chains_correct(output_text, len(problem.answers))
    return chain_correct(output_text)


def task_splits(task: Any) -> dict[str, list[Problem]]:
    """The splits of a `task` config section (config/schema.py ArithTaskConfig: the same field names)."""
    return make_splits(ArithConfig(
        seed=task.seed, prompt_length=task.prompt_length, gen_length=task.gen_length, min_steps=task.min_steps,
        max_steps=task.max_steps, n_train=task.n_train, n_val=task.n_val, n_test=task.n_test,
        problems_per_sample=getattr(task, "problems_per_sample", 1),
    ))
