"""Run-time helpers: CPU accounting for threads=auto, atomic writes, fresh run dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.fileio import atomic_write_json
from d3llm_pipeline.runtime import (
    CpuSample,
    _cpu_times,
    busy_cores,
    configure_threads,
    cpu_sample_from,
    fresh_dir,
    one_of_several_ranks,
    threads_between,
)


def test_cpu_times_reads_idle_and_total_from_proc_stat_format():
    text = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 50 2 25 400 10 0 3 0 0 0\n"
    assert _cpu_times(text) == (820, 980)  # idle + iowait, sum of all fields


def test_cpu_sample_reads_the_machine_and_this_process():
    stat = "cpu  100 5 50 800 20 0 5 0 0 0\ncpu0 50 2 25 400 10 0 3 0 0 0\n"
    # a command name with spaces and a ")" in it; utime 70 and stime 12 are fields 14 and 15
    self_stat = "4242 (pt main) x) R 1 4242 4242 0 -1 4194304 900 0 0 0 70 12 0 0 20 0 9 0 5 0 0"
    assert cpu_sample_from(stat, self_stat) == CpuSample(idle=820, total=980, own=82)


def window(idle: int, busy: int, own: int) -> tuple[CpuSample, CpuSample]:
    """Two samples `idle + busy` jiffies apart, `busy` of them busy, `own` of those ours."""
    start = CpuSample(idle=5000, total=9000, own=300)
    return start, CpuSample(start.idle + idle, start.total + idle + busy, start.own + own)


@pytest.mark.parametrize(("idle", "busy", "own", "cores", "threads"), [
    (0, 200, 100, 2, 1),  # 2 cores x 100 ticks: another job holds one core, we the other -> 1
    (100, 100, 100, 2, 2),  # that job ended: only our own thread is busy -> 2 (a core freed up)
    (0, 200, 200, 2, 2),  # our 2 threads fill the machine: our own time is not other work -> stay at 2
    (0, 200, 60, 2, 1),  # we got 0.6 of a core (oversubscribed), other work 1.4 -> 1
    (200, 0, 0, 2, 2),  # idle -> every core
    (170, 230, 100, 4, 3),  # 4 cores x 100 ticks: other work 1.3 cores -> round(2.7) = 3
    (0, 400, 0, 4, 1),  # every core busy with other work -> at least 1
    (100, 100, 150, 2, 2),  # own time counted a tick ahead of /proc/stat: other work never below 0
])
def test_threads_between_leaves_out_our_own_cpu_time(idle, busy, own, cores, threads):
    assert threads_between(*window(idle, busy, own), cores) == threads


def test_threads_between_needs_time_to_pass():
    sample = CpuSample(idle=1, total=2, own=0)
    assert threads_between(sample, sample, 2) is None


def test_auto_threads_callback_resizes_the_pool_when_a_core_frees_up(monkeypatch, caplog):
    from d3llm_pipeline.training import threads as watch

    start, held = window(0, 200, 100)  # a minute with another job on one of 2 cores
    freed = CpuSample(held.idle + 100, held.total + 200, held.own + 100)  # the next: only our thread busy
    samples = iter([start, held, held, freed])
    monkeypatch.setattr(watch, "cpu_sample", lambda: next(samples))
    monkeypatch.setattr(watch.os, "cpu_count", lambda: 2)
    assert watch.thread_watch(1) == [] and isinstance(watch.thread_watch("auto")[0], watch.AutoThreads)
    callback, before = watch.AutoThreads(every_s=0.0), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        callback.on_train_start(None, None)
        with caplog.at_level("INFO", logger=watch.__name__):
            callback.on_train_batch_end(None, None, None, None, 0)  # another job holds a core: stays at 1
            assert torch.get_num_threads() == 1 and not caplog.records
            callback.on_train_batch_end(None, None, None, None, 1)  # same sample again: no time passed, no change
            callback.on_train_batch_end(None, None, None, None, 2)  # that job ended
        assert torch.get_num_threads() == 2
        assert [r.getMessage() for r in caplog.records] == ["threads 1 -> 2: a core freed up"]
    finally:
        torch.set_num_threads(before)


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


def test_fresh_dir_gives_runs_started_in_the_same_second_their_own_dirs(tmp_path):
    """Eight runs claim the same dated dir at once: each gets its own (mkdir is atomic), the first the name itself."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path / "runs" / "eval" / "2026-12-07_18-41-04"
    (tmp_path / "runs").mkdir()
    barrier = __import__("threading").Barrier(8)

    def claim(_):
        barrier.wait()
        return fresh_dir(base)

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim, range(8)))
    assert sorted(claimed) == sorted([str(base)] + [f"{base}_{k}" for k in range(2, 9)])
    assert all(Path(d).is_dir() for d in claimed)
    assert fresh_dir(base) == f"{base}_9"  # an existing dir (an earlier run's) is never handed out again


def test_one_of_several_ranks_reads_the_launchers_variables(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert not one_of_several_ranks()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task Slurm job (submitit) is a plain run
    assert not one_of_several_ranks()
    monkeypatch.setenv("RANK", "0")  # torchrun's rank 0 too: every rank must meet in one dir
    assert one_of_several_ranks()

