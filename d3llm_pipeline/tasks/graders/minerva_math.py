"""MATH (hendrycks_math, 7 subsets) graded with Math-Verify, as lm-eval 0.4.13's ``minerva_math`` tasks compute
their ``math_verify`` metric.

    from d3llm_pipeline.tasks.graders import minerva_math

    g = minerva_math.grade("... so the answer is $\\boxed{0.5}$.", "... $\\boxed{\\frac{1}{2}}$")
    g.correct                                  # True
    g.gold, g.predicted                        # what Math-Verify extracted from each side, for logging

lm-eval's ``process_results`` calls ``verify(gold=parse(doc["solution"]), target=parse(response))``: both sides
go through Math-Verify's default extraction (LaTeX, then plain expressions), which takes the last ``\\boxed{}``
or a "final answer is ..." statement, falls back to the last math expression, and compares symbolically
(fractions vs decimals, intervals, sets, equations). ``reference`` here is that full ``solution`` text (a bare
``\\boxed{...}`` or answer string also works).

Not reproduced: the task's second metric, ``exact_match`` (Minerva's string normalisation followed by sympy
``parse_latex``). lm-eval's own implementation cannot even be imported in this environment: it asserts
antlr4-python3-runtime 4.11, while Hydra pins 4.9.3. Math-Verify works with 4.9.3.

Math-Verify bounds parsing and comparison with ``signal.alarm``, which only works in the main thread; from any
other thread ``grade`` runs without those timeouts (``timeout_s`` is ignored) instead of failing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

STOP_SEQUENCES = ("Problem:",)  # lm-eval minerva_math_*.yaml `until`
PROMPT = "Problem:\n{problem}\n\nSolution:"  # lm-eval minerva_math doc_to_text
SUBSETS = ("algebra", "counting_and_prob", "geometry", "intermediate_algebra", "num_theory", "prealgebra",
           "precalc")


@dataclass(frozen=True)
class MathGrade:
    correct: bool  # lm-eval's math_verify metric for this sample
    gold: str  # the answer Math-Verify extracted from the reference ("" when none)
    predicted: str  # ... and from the response ("" when none)


def _timeout(timeout_s: int | None) -> int | None:
    # signal.alarm cannot be armed outside the main thread; Math-Verify raises there unless told not to time out.
    return timeout_s if threading.current_thread() is threading.main_thread() else None


def parse(text: str, timeout_s: int | None = 5) -> list:
    """Math-Verify's default extraction of ``text``: ``[sympy_object, extracted_string]``, or ``[]``."""
    from math_verify import parse as mv_parse  # here: importing sympy costs ~0.5 s, paid only when grading

    return mv_parse(text, parsing_timeout=_timeout(timeout_s))


def _as_text(parsed: list) -> str:
    return str(parsed[-1]) if parsed else ""


def grade(response: str, reference: str, timeout_s: int | None = 5) -> MathGrade:
    """lm-eval's math_verify metric for one (stop-string-truncated) response against the ``solution``."""
    from math_verify import verify

    gold = parse(reference, timeout_s)
    predicted = parse(response, timeout_s)
    # Same argument order as lm-eval: verify is not symmetric (gold equations/assignments are unwrapped).
    correct = bool(verify(gold=gold, target=predicted, timeout_seconds=_timeout(timeout_s)))
    return MathGrade(correct=correct, gold=_as_text(gold), predicted=_as_text(predicted))
