"""Run-time helpers: CPU accounting for threads=auto, atomic writes."""

from __future__ import annotations

import pytest
import torch

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.runtime import _cpu_times, busy_cores, configure_threads


def test_cpu_times_reads_idle_and_total_from_proc_stat_format():
    text = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 50 2 25 400 10 0 3 0 0 0\n"
    assert _cpu_times(text) == (820, 980)  # idle + iowait, sum of all fields


def test_busy_cores_is_within_the_machine():
    import os

    assert 0.0 <= busy_cores(0.05) <= (os.cpu_count() or 1) + 1e-9


def test_configure_threads_explicit_and_errors():
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads("auto") >= 1
        for bad in ("many", 0):
            with pytest.raises(ConfigError, match="threads must be"):
                configure_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write_json(tmp_path / "m.json", {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and '"a": 2' in (tmp_path / "m.json").read_text()
