"""stage=ablation on a real family: `experiment=d3llm_llada`, two variants x one seed on the official-format LLaDA
fixture (random weights; size overrides only: paper_fixture.py). The `full` row decodes the default student (the
d3LLM LLaDA recipe); the `dparallel` row distils its own student with dParallel's method on top of LLaDA's recipe,
so it keeps LLaDA's LoRA targets and optimiser and takes dParallel's rank for LLaDA (128) and one 32-token block.
Training runs on the prompt set (suite.train_task), both variants are swept on the suite's first benchmark and
scored against the paper's y_max for it.
"""

from __future__ import annotations

import json

from paper_fixture import paper_setup, run_step_stage


def test_ablation_runs_two_variants_on_the_llada_fixture(tmp_path):
    _, overrides = paper_setup(tmp_path, "llada", lora_r=None)  # the recipes' own ranks: 256 and dParallel's 128
    overrides = [*overrides, "stage.variants=[full,dparallel]", "stage.seeds=[0]", "stage.thresholds=[0.5]"]
    result = run_step_stage(tmp_path, "ablation", overrides)
    run = tmp_path / "run"
    assert not (run / "teacher").exists()  # the released teacher is used as it is
    default = json.loads((run / "distill" / "seed_0" / "default" / "metrics.json").read_text())["recipe"]
    dparallel = json.loads((run / "distill" / "seed_0" / "dparallel" / "metrics.json").read_text())["recipe"]
    assert default["name"] == "d3llm_llada" and default["masking"] == "trajectory" and default["lora"]["r"] == 256
    assert dparallel["name"] == "dparallel" and dparallel["masking"] == "random"
    assert dparallel["lora"]["r"] == dparallel["lora"]["alpha"] == 128  # dParallel's LLaDA rank (method.md §12.1)
    assert dparallel["lora"]["target_modules"] == default["lora"]["target_modules"] == ["q_proj", "k_proj",
                                                                                      "v_proj", "up_proj"]
    assert dparallel["curriculum"]["fixed_window"] == 32 and dparallel["curriculum"]["window"] == "off"
    assert (tmp_path / "outputs" / "artifacts" / "ablation" / "dparallel" / "student" / "merged").is_dir()
    # each variant decoded its own student on the benchmark, in the teacher's format
    for variant, student in (("full", "student"), ("dparallel", "ablation/dparallel/student")):
        metrics = json.loads((run / "variants" / variant / "seed_0" / "0" / "metrics.json").read_text())
        assert metrics["task"]["name"] == "gsm8k_cot"
        assert metrics["model"]["path"] == str(tmp_path / "outputs" / "artifacts" / student / "merged")
        assert metrics["model"]["name"] == "llada-8b-instruct-student"
    assert result["y_max"] == 74.98  # the paper's GSM8K-CoT value for LLaDA (suite.y_max)
    # the control: the released teacher as it is, decoded as `full` on the same benchmark
    control = json.loads((run / "control" / "0" / "metrics.json").read_text())
    assert (control["model"]["name"], control["task"]["name"], control["decoder"]["rule"]) == (
        "llada-8b-instruct", "gsm8k_cot", "d3llm")
    assert [row["variant"] for row in result["rows"]] == ["full", "dparallel", "control"]
    table = (run / "ablation.md").read_text()
    assert "| full |" in table and "| dparallel |" in table
