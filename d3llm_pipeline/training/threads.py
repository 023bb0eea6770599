"""threads=auto during training: a long run takes a core that frees up (and gives one back when other work starts).

`configure_threads("auto")` decides once, at the start, from the cores other work keeps busy then; a run of hours
would keep that choice after the other job ends. This callback re-measures every RECHECK_S seconds from two cheap
counter reads (no sleeping: the previous check's sample and this one), leaving this process's own CPU time out, and
resizes torch's thread pool when the free cores changed.

    callbacks += thread_watch(cfg.get("threads", "auto"))     # [] unless the setting is "auto"
"""

from __future__ import annotations

import logging
import os
import time

import lightning as L
import torch

from d3llm_pipeline.runtime import CpuSample, cpu_sample, threads_between

log = logging.getLogger(__name__)

# Seconds between checks: long enough to average a step's bursts and make the cost (two small file reads) nothing,
# short next to a run that would gain from a freed core.
RECHECK_S = 60.0


class AutoThreads(L.Callback):
    """Re-chooses torch's intra-op threads between optimiser steps (runtime.threads_between over the last window)."""

    def __init__(self, every_s: float = RECHECK_S) -> None:
        self.every_s = every_s
        self._sample: CpuSample | None = None
        self._at = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._sample, self._at = cpu_sample(), time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._at < self.every_s:
            return
        sample = cpu_sample()
        new = None
        if sample is not None and self._sample is not None:
            new = threads_between(self._sample, sample, os.cpu_count() or 1)
        self._sample, self._at = sample, now
        old = torch.get_num_threads()
        if new is not None and new != old:
            torch.set_num_threads(new)
            log.info("threads %d -> %d: %s", old, new, "a core freed up" if new > old else "other work took a core")


def thread_watch(setting: int | str) -> list[L.Callback]:
    """[AutoThreads()] for threads=auto; [] for an explicit count (the user's choice stands)."""
    return [AutoThreads()] if setting == "auto" else []
