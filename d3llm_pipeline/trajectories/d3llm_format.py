"""Import (and, for tests, export) d3LLM's published trajectory datasets.

d3LLM stores, per sample, `trajectory`: the full token sequence (prompt + generation region) after every
decoding step (method.md §1.4; e.g. `d3LLM/trajectory_data_llada_32`, 256 states of ~400 tokens each). We keep
the same information as one unmask step per response position. Conversion checks that the states really are
a reveal order (no remasking, no changed tokens) and that the last state equals `final_output`.

    rows = [from_d3llm_row(r, mask_token_id=126336) for r in d3llm_rows]
    ds = convert_d3llm_dataset(load_from_disk(path), mask_token_id=126336)
"""

from __future__ import annotations

from typing import Any

import torch

from d3llm_pipeline.trajectories.states import TrajectoryError, all_states, unmask_steps_from_states

LLADA_MASK_ID = 126336  # GSAI-ML/LLaDA-8B-Instruct's mask token


def from_d3llm_row(row: dict[str, Any], mask_token_id: int) -> dict[str, Any]:
    """One d3LLM row -> one row of our trajectory format (see store.ROW_FIELDS)."""
    prompt = list(row["prompt_ids"])
    p_len = len(prompt)
    states = torch.tensor(row["trajectory"], dtype=torch.long)  # (T, P + G)
    if states.dim() != 2 or states.shape[1] <= p_len:
        raise TrajectoryError(f"sample {row.get('idx')}: trajectory states must be (steps, prompt + generation)")
    if states[:, :p_len].ne(torch.tensor(prompt)).any():
        raise TrajectoryError(f"sample {row.get('idx')}: the prompt changes inside the trajectory")
    try:
        final, steps = unmask_steps_from_states(states[:, p_len:], mask_token_id)
    except TrajectoryError as err:
        raise TrajectoryError(f"sample {row.get('idx')}: {err}") from None
    if row.get("final_output") is not None and list(row["final_output"])[p_len:] != final.tolist():
        raise TrajectoryError(f"sample {row.get('idx')}: the last state differs from final_output")
    return {
        "sample_id": int(row["idx"]),
        "prompt_ids": prompt,
        "response_ids": final.tolist(),
        "unmask_step": steps.tolist(),
        "reference_ids": [],
        "nfe": int(row.get("nfe") or states.shape[0]),
        "answer": str(row.get("gt_answer") or ""),
        "predicted": None if row.get("llm_answer") is None else str(row["llm_answer"]),
        "is_correct": bool(row.get("is_correct", True)),
        "text": str(row.get("generated_text") or ""),
        "temperature": None,
        "attempt": None,
    }


def to_d3llm_row(row: dict[str, Any], mask_token_id: int) -> dict[str, Any]:
    """Our row -> d3LLM's layout (one full sequence per step); used to test the importer on real shapes."""
    response = torch.tensor(row["response_ids"])
    steps = torch.tensor(row["unmask_step"])
    prompt = torch.tensor(row["prompt_ids"])
    states = all_states(response, steps, mask_token_id)  # (T, G)
    full = torch.cat([prompt.expand(states.shape[0], -1), states], dim=1)
    return {
        "idx": row["sample_id"],
        "question": "",
        "prompt_ids": row["prompt_ids"],
        "trajectory": full.tolist(),
        "final_output": row["prompt_ids"] + row["response_ids"],
        "generated_text": row["text"],
        "llm_answer": row["predicted"],
        "gt_answer": row["answer"],
        "is_correct": row["is_correct"],
        "nfe": row["nfe"],
    }


def convert_d3llm_dataset(dataset, mask_token_id: int = LLADA_MASK_ID):
    """A `datasets.Dataset` in d3LLM's format -> one in ours (rows in the same order)."""
    from d3llm_pipeline.trajectories.store import FEATURES

    return dataset.map(
        lambda r: from_d3llm_row(r, mask_token_id), remove_columns=dataset.column_names, features=FEATURES,
        desc="convert d3LLM trajectories",
    )
