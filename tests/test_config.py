"""Config composition (every stage and experiment) and validation errors that name the key to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from d3llm_pipeline.config.schema import (
    STAGE_SCHEMAS,
    ArithTaskConfig,
    ConfigError,
    DecodeConfig,
    ModelConfig,
    TeacherStageConfig,
    load_section,
)
from d3llm_pipeline.stages import STAGES

CONF = Path(__file__).resolve().parents[1] / "conf"
# Stages whose defaults need one value from the user.
REQUIRED = {"trajectory_import": ["stage.source=/data/d3llm_trajectories"], "report": ["stage.runs=[/x]"]}


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["paths.root_dir=/tmp/d3llm-test", *overrides])


def test_every_stage_file_is_registered_and_validates():
    files = {p.stem for p in (CONF / "stage").glob("*.yaml")}
    assert files == set(STAGES)
    assert files == set(STAGE_SCHEMAS)
    for name in files:
        cfg = compose_cfg(f"stage={name}", *REQUIRED.get(name, []))
        assert cfg.stage.name == name
        load_section(cfg.stage, STAGE_SCHEMAS[name], "stage")
        load_section(cfg.model, ModelConfig, "model")
        load_section(cfg.task, ArithTaskConfig, "task")
        load_section(cfg.decode, DecodeConfig, "decode")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.experiment_name == experiment
    load_section(cfg.model, ModelConfig, "model")
    load_section(cfg.task, ArithTaskConfig, "task")
    # Hydra reads the package header only at the very top, so the command that runs it comes next.
    header, command = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert header == "# @package _global_"
    assert command.startswith("# python -m d3llm_pipeline") and f"experiment={experiment}" in command


def test_trajectory_stage_defaults_to_the_one_token_teacher_but_obeys_the_command_line():
    cfg = compose_cfg("stage=trajectory")
    assert (cfg.decode.rule, cfg.decode.tokens_per_step) == ("vanilla", 1)
    assert compose_cfg("stage=trajectory", "decode=threshold").decode.rule == "threshold"
    assert compose_cfg("stage=eval").decode.rule == "threshold"


def test_import_stage_requires_a_source():
    with pytest.raises(ConfigError, match=r"stage\.source"):
        load_section(compose_cfg("stage=trajectory_import").stage, STAGE_SCHEMAS["trajectory_import"], "stage")


@pytest.mark.parametrize("decoder", ["vanilla", "threshold", "d3llm"])
def test_decoders_compose_and_follow_the_task_length(decoder):
    cfg = compose_cfg(f"decode={decoder}", "task.gen_length=48")
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    assert dec.rule == decoder and dec.gen_length == 48


def test_default_responses_span_two_blocks():
    from statistics import median

    from d3llm_pipeline.tasks.arith import max_response_tokens

    cfg = compose_cfg()
    task = load_section(cfg.task, ArithTaskConfig, "task")
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    lengths = [max_response_tokens(n) for n in range(task.min_steps, task.max_steps + 1)]  # steps are uniform
    assert median(lengths) > dec.block_size and task.gen_length >= 64


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["decode.threshold=-1"], "decode.threshold"),
        (["decode.block_size=24"], "decode.block_size"),
        (["decode=threshold", "decode.score=confidence", "decode.threshold=1.5"], "decode.threshold"),
        (["decode.rule=greedy"], "decode.rule"),
        (["decode.tokens_per_step=0"], "decode.tokens_per_step"),
        (["+decode.treshold=0.3"], "decode.treshold"),
    ],
)
def test_bad_decode_values_name_the_key(overrides, key):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(cfg.decode, DecodeConfig, "decode")


def test_type_errors_name_the_key():
    cfg = compose_cfg("stage=teacher", "stage.max_steps=many")
    with pytest.raises(ConfigError, match=r"stage\.max_steps"):
        load_section(cfg.stage, TeacherStageConfig, "stage")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["task.max_steps=9"], "task.prompt_length"), (["task.gen_length=20"], "task.gen_length"),
     (["task.min_steps=4", "task.max_steps=3"], "task.min_steps")],
)
def test_bad_task_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(compose_cfg(*overrides).task, ArithTaskConfig, "task")


def test_launcher_presets_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["paths.root_dir=/x", "hydra/launcher=local"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == 2 and "Joblib" in cfg.hydra.launcher._target_
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the slurm preset needs the [slurm] extra
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["paths.root_dir=/x", "hydra/launcher=slurm"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (CONF / "distill").glob("*.yaml")))
def test_every_distill_recipe_validates(recipe):
    from d3llm_pipeline.config.schema import DistillConfig

    distill = load_section(compose_cfg("stage=distill", f"distill={recipe}").distill, DistillConfig, "distill")
    assert distill.curriculum.r_min <= distill.curriculum.r_max


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_config_validates(model):
    assert load_section(compose_cfg(f"model={model}").model, ModelConfig, "model").family == "tiny"


@pytest.mark.parametrize(
    ("override", "key"),
    [("distill.masking=oracle", "distill.masking"), ("distill.curriculum.mask_ratio=cosine", "distill.curriculum"),
     ("distill.curriculum.r_min=0.9", "distill.curriculum"), ("distill.lora.r=0", "distill.lora.r")],
)
def test_bad_distill_values_name_the_key(override, key):
    from d3llm_pipeline.config.schema import DistillConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(compose_cfg("stage=distill", override).distill, DistillConfig, "distill")
