"""benchmarks/gpu_decode.py and benchmarks/distill_memory.py run on CPU with --tiny (the 8B-shaped code paths at CPU
size) and report every field."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_tiny_run_reports_every_decoder(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_decode.py"), "--tiny", "--presets",
                           "llada,dream", "--batch-sizes", "2", "--decode-repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {(r["preset"], r["decoder"]) for r in rows} == {
        (p, d) for p in ("llada", "dream") for d in ("vanilla", "threshold", "d3llm", "d3llm+cache")}
    for r in rows:
        assert r["device"] == "cpu" and r["batch"] == 2 and r["iterations"] == 16  # --tiny caps at 16 forwards
        assert r["tokens_per_s"] > 0 and r["bare_forward_ms"] > 0 and r["peak_gib"] > 0
        assert 0 < r["syncs_per_forward"] <= 1
    assert "step/fwd" in proc.stdout


def test_official_dir_without_the_decoder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_decode.py"), "--tiny", "--official",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "d3llm_llada_generate_util.py" in proc.stderr


def test_distill_memory_tiny_run_trains_and_reports_the_estimate(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distill_memory.py"), "--tiny", "--preset",
                           "dream", "--steps", "2", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())
    assert row["device"] == "cpu" and len(row["step_s"]) == 2 and row["loss"] > 0 and row["peak_gib"] > 0
    assert row["lora_parameters"] > 0 and row["estimate_gib"]["strategy"] == "cpu"
    assert row["estimate_gib"]["checkpointing"] is True and row["measured_over_estimate"] > 0
