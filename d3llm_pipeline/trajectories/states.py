"""Replay and recover trajectory states from the compact per-position unmask steps (pure tensor functions).

    state = state_at(response_ids, unmask_step, step=3, mask_token_id=1)   # (G,) or (B, G)
    steps = unmask_steps_from_states(states, mask_token_id=1)              # inverse: (T, G) -> (G,)
"""

from __future__ import annotations

import torch


def state_at(response_ids: torch.Tensor, unmask_step: torch.Tensor, step: int | torch.Tensor,
             mask_token_id: int) -> torch.Tensor:
    """The teacher's generation region after forward `step` (0-based): revealed iff unmask_step <= step.

    response_ids, unmask_step: (..., G); step: int or (...,) per row. Positions never revealed (step -1
    would mean 'unknown') are treated as revealed only if their step is >= 0 and <= `step`.
    """
    step = torch.as_tensor(step, device=unmask_step.device)
    if step.dim() > 0:
        step = step[..., None]  # (..., 1) broadcast over positions
    revealed = (unmask_step >= 0) & (unmask_step <= step)
    return torch.where(revealed, response_ids, torch.full_like(response_ids, mask_token_id))


def all_states(response_ids: torch.Tensor, unmask_step: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Every state (T, G) of one sample's decode, T = max step + 1 (the d3LLM 'trajectory' list)."""
    steps = torch.arange(int(unmask_step.max()) + 1, device=unmask_step.device)  # (T,)
    return state_at(response_ids.expand(len(steps), -1), unmask_step.expand(len(steps), -1), steps,
                    mask_token_id)


class TrajectoryError(ValueError):
    """A trajectory that is not a valid reveal order (remasking, changed tokens, never-revealed positions)."""


def unmask_steps_from_states(states: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover (final ids (G,), unmask step (G,)) from the full states (T, G) of one decode.

    Step of a position = the first state in which it is not MASK. Raises TrajectoryError if a revealed
    token is later remasked or changed (not a pseudo-trajectory) or a position is never revealed.
    """
    revealed = states != mask_token_id  # (T, G)
    if not revealed[-1].all():
        missing = int((~revealed[-1]).sum())
        raise TrajectoryError(f"{missing} positions are still MASK in the last state")
    # Once revealed, a position must stay revealed with the same token in every later state.
    if (revealed[:-1] & ~revealed[1:]).any():
        raise TrajectoryError("a revealed position is masked again in a later state")
    final = states[-1]
    if ((states != final[None, :]) & revealed).any():
        raise TrajectoryError("a revealed token changes in a later state")
    first = revealed.to(torch.uint8).argmax(dim=0)  # (G,) first True
    return final, first.long()
