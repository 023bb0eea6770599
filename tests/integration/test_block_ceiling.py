"""benchmarks/block_ceiling.py: forwards per sample against the blocks a response spans (known answers by hand)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "block_ceiling.py"


def load_script():
    spec = importlib.util.spec_from_file_location("block_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocks_count_the_eos_and_the_ceiling_is_tokens_over_blocks(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({
        "decoder": {"name": "d3llm", "block_size": 16, "threshold": 0.5}, "model": {"name": "m"}, "accuracy": 0.5}))
    # tokens before EOS 15 / 16 / 40 -> with the EOS 16 / 17 / 41 positions -> 1 / 2 / 3 blocks of 16
    samples = [{"tokens": 15, "nfe": 1}, {"tokens": 16, "nfe": 4}, {"tokens": 40, "nfe": 3}]
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    row = load_script().ceiling_row(tmp_path)
    assert row["mean_blocks"] == pytest.approx(2.0) and row["mean_nfe"] == pytest.approx(8 / 3)
    assert row["within_one_forward_of_blocks"] == pytest.approx(2 / 3)  # 4 forwards for 2 blocks is over
    assert row["tpf"] == pytest.approx(71 / 8) and row["ceiling_tpf"] == pytest.approx(71 / 6)
