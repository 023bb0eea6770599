"""GSM8K answer extraction and exact match, exactly as lm-eval 0.4.13's ``gsm8k`` and ``gsm8k_cot*`` tasks do it.

    from d3llm_pipeline.tasks.graders import gsm8k

    g = gsm8k.grade("... so 6 + 36 = 42. The answer is 42.", "Natalia sold ... #### 42", task="gsm8k_cot")
    g.strict_match, g.flexible_extract        # True, True
    g.strict_answer, g.flexible_answer        # "42", "42."

lm-eval reports two filters for each task (both are computed here; d3LLM does not say which it reported):

- ``strict-match``: the FIRST match of the task's format regex, its capture group: ``#### N`` for ``gsm8k``
  (5-shot "Question:/Answer:"), ``The answer is N.`` for ``gsm8k_cot`` / ``gsm8k_cot_zeroshot``;
- ``flexible-extract``: the LAST number-like match anywhere (``(-?[$0-9.,]{2,})|(-?[0-9]+)``), so the final
  number of a chain of thought counts even without the expected phrase.

No match gives ``"[invalid]"`` (lm-eval's fallback, which never equals a number). ``exact_match`` then compares
the extracted string with the reference after the task's normalisation, applied to both sides in this order:
remove ``,``, remove ``$``, remove everything up to the last ``#### `` (turns the dataset's whole ``answer``
field into its number), remove one trailing ``.``, lower-case. Quirks kept on purpose, since they decide
lm-eval's scores: the strict CoT pattern ends in an unescaped ``.`` (any character), so "The answer is 42" at
the very end of a text extracts "4"; and "42.0" does not equal "42".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# lm-eval 0.4.13 tasks/gsm8k/*.yaml, filter_list: the regex_pattern of each filter.
STRICT_PATTERNS = {
    "gsm8k": r"#### (\-?[0-9\.\,]+)",
    "gsm8k_cot": r"The answer is (\-?[0-9\.\,]+).",
    "gsm8k_cot_zeroshot": r"The answer is (\-?[0-9\.\,]+).",
}
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
FALLBACK = "[invalid]"
# metric_list exact_match: regexes_to_ignore (in order), ignore_case: true.
IGNORE_REGEXES = (",", r"\$", r"(?s).*#### ", r"\.$")
# generation_kwargs.until of each task (the model class cuts generations there, before grading).
STOP_SEQUENCES = {
    "gsm8k": ("Question:", "</s>", "<|im_end|>"),
    "gsm8k_cot": ("Q:", "</s>", "<|im_end|>"),
    "gsm8k_cot_zeroshot": ("Q:", "</s>", "<|im_end|>"),
}
TASKS = tuple(STRICT_PATTERNS)

_STRICT = {task: re.compile(p) for task, p in STRICT_PATTERNS.items()}
_FLEXIBLE = re.compile(FLEXIBLE_PATTERN)
_IGNORE = tuple(re.compile(p) for p in IGNORE_REGEXES)


@dataclass(frozen=True)
class GSM8KGrade:
    strict_match: bool  # exact_match under the strict-match filter
    flexible_extract: bool  # exact_match under the flexible-extract filter
    strict_answer: str  # what each filter extracted (FALLBACK when nothing matched)
    flexible_answer: str
    target: str  # the normalised reference


def regex_extract(text: str, pattern: str | re.Pattern, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm-eval's ``regex`` filter on one response: all matches (``findall``), pick ``group_select`` (0 =
    first, -1 = last); with several capture groups a match is a tuple and its first non-empty group wins."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    matches = regex.findall(text if isinstance(text, str) else "")
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


def extract_strict(text: str, task: str = "gsm8k_cot") -> str:
    """The ``strict-match`` filter of ``task``: first match of its format regex."""
    return regex_extract(text, _STRICT[_check_task(task)], group_select=0)


def extract_flexible(text: str) -> str:
    """The ``flexible-extract`` filter (the same for every gsm8k task): last number-like match."""
    return regex_extract(text, _FLEXIBLE, group_select=-1)


def normalize(text: str) -> str:
    """The ``exact_match`` normalisation, applied to predictions and references alike."""
    for regex in _IGNORE:
        text = regex.sub("", text)
    return text.lower()


def reference_answer(answer: str) -> str:
    """The normalised reference from the dataset's ``answer`` field ("...reasoning... #### 1,000" -> "1000");
    a bare number ("42", as gsm8k_cot's doc_to_target passes it) works too."""
    return normalize(answer)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def grade(response: str, reference: str, task: str = "gsm8k_cot") -> GSM8KGrade:
    """Both lm-eval filters on one (stop-string-truncated) response, against the dataset's ``answer``."""
    strict = extract_strict(response, task)
    flexible = extract_flexible(response)
    target = reference_answer(reference)
    return GSM8KGrade(
        strict_match=normalize(strict) == target,
        flexible_extract=normalize(flexible) == target,
        strict_answer=strict,
        flexible_answer=flexible,
        target=target,
    )


def _check_task(task: str) -> str:
    if task not in _STRICT:
        raise ValueError(f"unknown GSM8K task {task!r}; expected one of {', '.join(TASKS)}")
    return task
