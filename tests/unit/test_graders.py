"""GSM8K and MATH graders: hand-made responses with known verdicts, and a cross-check of the GSM8K grader
against lm-eval 0.4.13's own filter, metric and task YAMLs (the definition we claim to reproduce)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from d3llm_pipeline.tasks.graders import gsm8k, minerva_math

NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

# (response, dataset answer, task, strict extracted, strict correct, flexible extracted, flexible correct)
CASES = [
    ("Natalia sold 24 clips in May, 48 + 24 = 72 in total. The answer is 72.", NATALIA, "gsm8k_cot",
     "72", True, "72.", True),
    ("She has $1,000 left. The answer is 1,000.", "#### 1000", "gsm8k_cot", "1,000", True, "1,000.", True),
    # "$" is not in the strict class: no strict match; flexible keeps "$1,000." and normalisation strips it.
    ("So she has 3 * 500 = 1500 - 500. The answer is $1,000.", "ab\n#### 1,000", "gsm8k_cot",
     gsm8k.FALLBACK, False, "$1,000.", True),
    # Quirk: the strict pattern's last "." is any character, so at the very end it eats the final digit.
    ("2 + 40 = 42. The answer is 42", "#### 42", "gsm8k_cot", "4", False, "42", True),
    # strict takes the FIRST match (greedy class takes "5.", the final any-character "." eats the space).
    ("The answer is 5. Wait, 5 + 2 = 7. The answer is 7.", "#### 7", "gsm8k_cot", "5.", False, "7.", True),
    ("It drops by 3 each day. The answer is -3.", "#### -3", "gsm8k_cot_zeroshot", "-3", True, "-3.", True),
    ("The answer is 42.0.", "#### 42", "gsm8k_cot", "42.0", False, "42.0.", False),
    ("THE ANSWER IS 42.", "#### 42", "gsm8k_cot", gsm8k.FALLBACK, False, "42.", True),
    ("I am not sure.", "#### 42", "gsm8k_cot", gsm8k.FALLBACK, False, gsm8k.FALLBACK, False),
    # gsm8k (5-shot "Question:/Answer:"): strict wants "#### N", the first one.
    ("48 / 2 = 24 and 48 + 24 = 72\n#### 72", NATALIA, "gsm8k", "72", True, "72", True),
    ("#### 70\nSorry: 48 + 24 = 72\n#### 72", NATALIA, "gsm8k", "70", False, "72", True),
    ("The answer is 72.", NATALIA, "gsm8k", gsm8k.FALLBACK, False, "72.", True),
    ("#### $72", NATALIA, "gsm8k", gsm8k.FALLBACK, False, "$72", True),
]


@pytest.mark.parametrize("response,answer,task,strict,strict_ok,flexible,flexible_ok", CASES)
def test_gsm8k_hand_made_cases(response, answer, task, strict, strict_ok, flexible, flexible_ok):
    g = gsm8k.grade(response, answer, task=task)
    assert (g.strict_answer, g.strict_match) == (strict, strict_ok)
    assert (g.flexible_answer, g.flexible_extract) == (flexible, flexible_ok)


def test_gsm8k_reference_parsing():
    assert gsm8k.reference_answer(NATALIA) == "72"
    assert gsm8k.reference_answer("The total is 500 + 500.\n#### 1,000") == "1000"
    assert gsm8k.reference_answer("#### -5") == "-5"
    assert gsm8k.reference_answer("42") == "42"  # gsm8k_cot's doc_to_target passes the bare number
    assert gsm8k.exact_match("$1,000.", "1000") and not gsm8k.exact_match("1000.5", "1000")


def test_gsm8k_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="gsm8k_cot_zeroshot"):
        gsm8k.extract_strict("The answer is 1.", task="gsm8k_cotzeroshot")


def _lm_eval_task_yaml(name: str) -> dict:
    import lm_eval

    return yaml.safe_load(Path(lm_eval.__file__).parent.joinpath("tasks", "gsm8k", name).read_text())


@pytest.mark.parametrize(
    "task,file", [("gsm8k", "gsm8k.yaml"), ("gsm8k_cot", "gsm8k-cot.yaml"),
                  ("gsm8k_cot_zeroshot", "gsm8k-cot-zeroshot.yaml")]
)
def test_gsm8k_patterns_are_lm_evals(task, file):
    """Our constants are the installed lm-eval task's filters, metric options and stop strings."""
    cfg = _lm_eval_task_yaml(file)
    filters = {f["name"]: f["filter"] for f in cfg["filter_list"]}
    assert filters["strict-match"][0]["regex_pattern"] == gsm8k.STRICT_PATTERNS[task]
    assert filters["strict-match"][0].get("group_select", 0) == 0
    assert filters["flexible-extract"][0]["regex_pattern"] == gsm8k.FLEXIBLE_PATTERN
    assert filters["flexible-extract"][0]["group_select"] == -1
    metric = cfg["metric_list"][0]
    assert tuple(metric["regexes_to_ignore"]) == gsm8k.IGNORE_REGEXES
    assert metric["ignore_case"] is True and metric["ignore_punctuation"] is False
    assert tuple(cfg["generation_kwargs"]["until"]) == gsm8k.STOP_SEQUENCES[task]


def test_gsm8k_agrees_with_lm_eval_filters_and_metric():
    """Same extraction and verdict as lm-eval's RegexFilter + exact_match on every hand-made case."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    responses = [c[0] for c in CASES] + ["", "1,2,3", "-", "costs $5 and $7.50 total $12.50.", "x\n#### 9\n"]
    for task, answer in [("gsm8k", NATALIA), ("gsm8k_cot", "#### 1000"), ("gsm8k_cot", "#### 12.50")]:
        strict_f = RegexFilter(regex_pattern=gsm8k.STRICT_PATTERNS[task])
        flex_f = RegexFilter(regex_pattern=gsm8k.FLEXIBLE_PATTERN, group_select=-1)
        for response in responses:
            ours = gsm8k.grade(response, answer, task=task)
            [[strict]] = strict_f.apply([[response]], [{}])
            [[flexible]] = flex_f.apply([[response]], [{}])
            assert (ours.strict_answer, ours.flexible_answer) == (strict, flexible), response
            for extracted, verdict in [(strict, ours.strict_match), (flexible, ours.flexible_extract)]:
                em = exact_match_hf_evaluate(
                    predictions=[extracted], references=[answer], regexes_to_ignore=list(gsm8k.IGNORE_REGEXES),
                    ignore_case=True, ignore_punctuation=False,
                )["exact_match"]
                assert verdict == (em == 1.0), (response, extracted)


MINERVA_SOLUTION = (
    "If we multiply the first equation by $-\\frac{3}{2}$, we obtain $$6y-9x=-\\frac{3}{2}a.$$ "
    "So $\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$"
)


@pytest.mark.parametrize(
    "response,reference,correct",
    [
        ("So the probability is $\\boxed{0.5}$.", "Hence $\\boxed{\\frac{1}{2}}$.", True),
        ("Thus $x = 0.5$.\nFinal Answer: The final answer is $0.5$. I hope it is correct.",
         "$\\boxed{\\frac{1}{2}}$", True),
        ("Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", MINERVA_SOLUTION, True),
        ("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.", MINERVA_SOLUTION, False),
        ("We get $\\boxed{3}$.", "$\\boxed{4}$", False),
        ("The domain is $\\boxed{[2,5)}$.", "so the domain is $\\boxed{[2,5)}$.", True),
        ("The domain is $\\boxed{(2,5)}$.", "so the domain is $\\boxed{[2,5)}$.", False),
        ("It factors as $\\boxed{x(x+2)}$.", "$\\boxed{x^2+2x}$", True),
        ("I could not solve it.", "$\\boxed{4}$", False),
        ("", "$\\boxed{4}$", False),
    ],
)
def test_math_verify_cases(response, reference, correct):
    assert minerva_math.grade(response, reference).correct is correct


def test_math_grade_reports_what_it_extracted():
    g = minerva_math.grade("We get $\\boxed{3}$.", "$\\boxed{4}$")
    assert (g.gold, g.predicted) == ("4", "3")
    assert minerva_math.grade("no answer here", "$\\boxed{4}$").predicted == ""


def test_math_grade_works_off_the_main_thread():
    """Math-Verify's signal-based timeouts only work in the main thread; grade must not fail elsewhere."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(minerva_math.grade("$\\boxed{0.5}$", "$\\boxed{\\frac12}$")))
    t.start()
    t.join()
    assert out and out[0].correct
