"""MBPP graded by execution: the model's code followed by the record's ``assert`` lines, run in the sandbox.

    from d3llm_pipeline.tasks.graders import mbpp

    record = {"text": "...", "code": "...", "test_list": ["assert f(1) == 2", ...], "test_setup_code": ""}
    results = mbpp.grade([record], [completion], allow_code_execution=True)

The program is ``code + "\\n" + "\\n".join(test_list)``, the text lm-eval 0.4.13's ``mbpp`` and
``mbpp_instruct`` tasks hand to HF ``code_eval`` (reference = the test lines). A non-empty
``test_setup_code`` is put between the two (lm-eval drops it; MBPP's own harness runs it first).
What the code is depends on the lm-eval task:

- ``mbpp`` (3-shot): the generation stopped at ``[DONE]`` (``STOP_SEQUENCES``) is the code as it is;
- ``mbpp_instruct``: the assistant turn starts with ``INSTRUCT_GEN_PREFIX`` (an open ```python fence), so the
  code is what precedes the closing fence: ``extract_code_block(response)``.

MBPP data is not bundled anywhere offline; the next increment loads it through lm-eval / ``datasets``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from d3llm_pipeline.tasks.graders.execution import (
    ExecutionLimits,
    ExecutionResult,
    require_opt_in,
    run_programs,
)

STOP_SEQUENCES = ("[DONE]",)  # lm-eval mbpp.yaml `until`
INSTRUCT_GEN_PREFIX = "\n```python\n"  # lm-eval mbpp_instruct.yaml gen_prefix

# A fenced block: ``` + optional language tag on the SAME line as the fence, then the body up to the next ```.
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def build_program(code: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """The text executed for one MBPP answer: the code, any setup code, then one assert per line."""
    if not test_list:
        raise ValueError("an MBPP record needs at least one test in test_list")
    setup = test_setup_code.strip()
    return code + "\n" + (setup + "\n" if setup else "") + "\n".join(test_list)


def extract_code_block(response: str) -> str:
    """mbpp_instruct: the code the model wrote inside the fence that ``INSTRUCT_GEN_PREFIX`` opened.

    The response starts inside that fence, so the code is everything before the first closing ```; when
    the model closed nothing, all of it. If the model opened a fence of its own first (```python ...```),
    that block's body is taken instead. Unlike lm-eval 0.4.13's ``extract_code_blocks``, a response that
    starts with code keeps its first word: that function prepends ``` without a newline, so its optional
    language-tag group swallows e.g. the ``def`` of ``def f(): ...`` (lm-eval PR #3769, open upstream).
    """
    stripped = response.lstrip()
    if stripped.startswith("```"):  # the model re-opened a fence: take that block's body
        m = _FENCE.match(stripped)
        if m:
            return m.group(2).rstrip("\n")
        # An opened but never closed fence: the rest of the response after the fence line.
        return stripped.partition("\n")[2]
    end = response.find("```")
    return (response if end == -1 else response[:end]).strip("\n")


def grade(
    records: Sequence[Mapping],
    completions: Sequence[str],
    limits: ExecutionLimits | None = None,
    *,
    allow_code_execution: bool = False,
    workers: int = 2,
) -> list[ExecutionResult]:
    """Run every (record, code) pair in the sandbox; records need ``test_list`` (``test_setup_code``
    optional). One result per pair, in order."""
    require_opt_in(allow_code_execution)
    if len(records) != len(completions):
        raise ValueError(f"{len(records)} records but {len(completions)} completions")
    programs = [
        build_program(code, list(r["test_list"]), r.get("test_setup_code") or "")
        for r, code in zip(records, completions, strict=True)
    ]
    return run_programs(programs, limits, allow_code_execution=allow_code_execution, workers=workers)
