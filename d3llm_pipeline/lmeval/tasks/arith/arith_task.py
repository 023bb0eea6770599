"""Dataset loader and grader of the lm-eval `arith` task (arith.yaml next to this file; lm-eval imports this
module through the YAML's `!function` tags). Offline: the documents are made from the seed.

    docs = load_arith(arith_n=50)["test"]                  # a datasets.Dataset: prompt, response, answer
    process_results(docs[0], ["5 - 4 = 1 #### 1"])       # {"exact_match": ..., "chain_correct": ...}
"""

from __future__ import annotations

from typing import Any

from d3llm_pipeline.tasks import arith


def arith_problems(arith_seed: int | None = None, arith_n: int | None = None,
                   arith_split: str = "test") -> list[arith.Problem]:
    """The problems of a split of the pipeline's task=arith (tasks/arith.py ArithTask: the same problems stage=eval
    decodes; arith_seed: another task.seed), the first `arith_n` of them."""
    seed = arith.ArithTask.seed if arith_seed is None else int(arith_seed)
    task = arith.ArithTask(seed=seed, n_train=0)  # held-out splits never depend on n_train
    if arith_split not in ("test", "validation"):
        raise ValueError(f"arith_split must be test or validation, got {arith_split!r}")
    problems = task.problems(arith_split)
    return problems if arith_n is None else problems[: int(arith_n)]


def load_arith(**metadata: Any) -> dict[str, Any]:
    """lm-eval's custom_dataset hook: {"test": Dataset}. `metadata` also holds model_args and the YAML's
    metadata (lm-eval passes everything), so only the arith_* keys are read."""
    import datasets

    problems = arith_problems(**{k: v for k, v in metadata.items() if k.startswith("arith_")})
    rows = [{"prompt": p.prompt, "response": p.response, "answer": p.answer} for p in problems]
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Our arith grader: exact final answer after `####`, and the chain-of-thought check."""
    text = results[0].strip()
    return {"exact_match": int(arith.grade(text, int(doc["answer"]))), "chain_correct": int(arith.chain_correct(text))}
