"""The lm-eval task `arith` (arith.yaml + arith_task.py): the embedded arith test split, graded by arith.grade."""
