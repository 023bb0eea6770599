"""The paper-recipe experiments compose to exactly the values docs/recipes.md lists with their sources: every cell of
its table is checked against the composed config of `stage=pipeline experiment=<name>` or of the pipeline step the
row names (trajectory, distill, an eval of GSM8K-CoT by the student).

Run: .venv/bin/python -m pytest tests/integration/test_recipes.py -q
"""

from __future__ import annotations

import pytest
import yaml
from conftest import CONF, ROOT, compose_at
from omegaconf import OmegaConf

EXPERIMENTS = ("d3llm_llada", "d3llm_dream", "dparallel_llada")


def recipe_table() -> list[dict[str, str]]:
    """The rows of docs/recipes.md's table: {"step", "key", <experiment>: cell, "source"}."""
    rows, header = [], None
    for line in (ROOT / "docs" / "recipes.md").read_text().splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def step_config(tmp_path, experiment: str, step: str):
    """The composed config of one row's step, as stage=pipeline builds it (stages/steps.py compose_step)."""
    from hydra import initialize_config_dir

    from d3llm_pipeline.stages.steps import compose_step, student_overrides

    overrides = [f"paths.root_dir={tmp_path}", f"experiment={experiment}"]
    pipeline = compose_at(tmp_path, "stage=pipeline", *overrides, f"+pipeline_overrides={overrides}")
    if step == "config":
        return pipeline
    train = [f"task={pipeline.suite.train_task}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if step in ("trajectory", "distill"):
            return compose_step(pipeline, tmp_path, step, f"stage={step}", *train)
        decoder = pipeline.suite.student_decoders[-1]  # the decoder the paper reports (d3llm; dParallel: threshold)
        return compose_step(pipeline, tmp_path, "eval", "stage=eval", "task=gsm8k_cot",
                            *student_overrides(pipeline), f"decode={decoder}")


def test_the_table_names_every_experiment_and_a_source_for_each_row():
    rows = recipe_table()
    assert len(rows) >= 40 and all(row["source"] for row in rows)
    assert {"config", "trajectory", "distill", "eval"} == {row["step"] for row in rows}
    assert all((ROOT / "conf" / "experiment" / f"{name}.yaml").is_file() for name in EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_composed_value_is_the_documented_one(tmp_path, experiment):
    configs, wrong = {}, []
    for row in recipe_table():
        step = row["step"]
        if step not in configs:
            configs[step] = step_config(tmp_path, experiment, step)
        node = OmegaConf.select(configs[step], row["key"], throw_on_missing=True)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        expected = yaml.safe_load(row[experiment])
        if value != expected:
            wrong.append(f"{step} {row['key']}: composed {value!r}, documented {expected!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_recipe_validates_for_every_stage_it_sets_up(tmp_path, experiment):
    from d3llm_pipeline.config.validate import validate_config

    for stage in ("pipeline", "trajectory", "distill"):
        validate_config(compose_at(tmp_path, f"stage={stage}", f"experiment={experiment}"))


@pytest.mark.parametrize("family,recipe,rank,alpha,block", [
    ("tiny", [], 16, 32, 16),  # the embedded recipe's alpha = 2 r
    ("llada", ["distill=llada", "model=llada_8b_instruct"], 128, 128, 32),
    ("dream", ["distill=dream", "model=dream_7b_instruct"], 32, 32, 32)])
def test_ablation_variants_go_on_top_of_the_familys_recipe(tmp_path, family, recipe, rank, alpha, block):
    """experiment=ablation_dparallel with a family's recipe is dParallel on that recipe (the variant used to swap the
    recipe for the embedded one, or vanish under distill=llada), with dParallel's rank for the family and one decode
    block; ablation_no_window_curriculum fixes the window at that family's block."""
    dparallel = OmegaConf.to_container(compose_at(tmp_path, "stage=distill", "experiment=ablation_dparallel",
                                                  *recipe).distill, resolve=True)
    underneath = OmegaConf.to_container(compose_at(tmp_path, "stage=distill", *recipe).distill, resolve=True)
    assert dparallel["masking"] == "random" and dparallel["curriculum"]["r_min"] == dparallel["curriculum"]["r_max"]
    assert (dparallel["lora"]["r"], dparallel["lora"]["alpha"]) == (rank, alpha)
    assert dparallel["curriculum"]["window_sizes"] == [block] and dparallel["curriculum"]["fixed_window"] == block
    assert dparallel["lora"]["target_modules"] == underneath["lora"]["target_modules"]
    assert dparallel["optim"] == underneath["optim"]  # the family's lr, batch and schedule
    fixed = compose_at(tmp_path, "stage=distill", "experiment=ablation_no_window_curriculum", *recipe).distill
    assert fixed.curriculum.window == "off" and fixed.curriculum.fixed_window == block
