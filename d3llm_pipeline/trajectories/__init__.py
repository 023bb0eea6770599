"""Pseudo-trajectories: the order in which a teacher reveals response tokens, stored compactly.

A trajectory is stored as one `unmask_step` per response position (relative to the response start): state j
of the teacher's decode = the positions with step <= j revealed, everything else MASK. See `states.py` for
replay, `store.py` for the chunked on-disk format and `d3llm_format.py` for importing d3LLM's datasets.
"""
