"""Config composition (every stage and experiment) and validation errors that name the key to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir

from d3llm_pipeline.config.schema import DecodeConfig, ModelConfig, load_section, load_task
from d3llm_pipeline.config.stage_schemas import STAGE_SCHEMAS
from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.stages import STAGES

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
        load_task(cfg.task)
        load_section(cfg.decode, DecodeConfig, "decode")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.experiment_name == experiment
    load_section(cfg.model, ModelConfig, "model")
    load_task(cfg.task)
    # Hydra reads the package header only at the very top, so the command that runs it comes next.
    header, command = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert header == "# @package _global_"
    assert command.startswith("# python -m d3llm_pipeline") and f"experiment={experiment}" in command


def test_roster_artifacts_are_kept_apart_per_task_orders():
    """make demo (experiment=roster) and its any-order variant never share (or replace) each other's artifacts."""
    ends, any_order = compose_cfg("experiment=roster"), compose_cfg("experiment=roster", "task.orders=any")
    assert (ends.task.orders, ends.paths.artifacts_dir.rsplit("/", 1)[1]) == ("ends", "artifacts_roster_ends")
    assert any_order.paths.artifacts_dir.rsplit("/", 1)[1] == "artifacts_roster_any"


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


def test_decode_spec_takes_every_shared_knob_and_the_family_rule_by_default():
    from dataclasses import fields

    from d3llm_pipeline.decoding import DecodeSpec
    from d3llm_pipeline.stages.common import decode_spec

    cfg = compose_cfg("decode=d3llm", "decode.cache_plan=reference", "decode.entropy_dtype=float64")
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    spec = decode_spec(dec)
    assert dec.accept_global_best is None and spec.accept_global_best is None  # null: the model family's rule
    assert (spec.cache_plan, spec.entropy_dtype) == ("reference", "float64")
    # one definition: the decode section is the decoder's spec plus the run-level keys, every default the spec's
    assert issubclass(DecodeConfig, DecodeSpec)
    assert {f.name for f in fields(DecodeConfig)} - {f.name for f in fields(DecodeSpec)} == {"name", "batch_size"}
    for f in fields(DecodeSpec):
        assert getattr(spec, f.name) == getattr(dec, f.name), f.name


def test_default_responses_span_two_blocks():
    from statistics import median

    from d3llm_pipeline.tasks.arith import max_response_tokens

    cfg = compose_cfg()
    task = load_task(cfg.task)
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
        (["decode=d3llm", "decode.cache_plan=official"], "decode.cache_plan"),
        (["decode.entropy_dtype=float16"], "decode.entropy_dtype"),
    ],
)
def test_bad_decode_values_name_the_key(overrides, key):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(cfg.decode, DecodeConfig, "decode")


def test_type_errors_name_the_key():
    """The schema's types are checked as the command line is composed (structured configs): one line naming the key."""
    from d3llm_pipeline.config.preflight import check_command_line

    with pytest.raises(ConfigError, match=r"^stage\.max_steps: Value 'many' .* could not be converted to Integer"):
        check_command_line(["stage=teacher", "stage.max_steps=many", "paths.root_dir=/tmp/d3llm-test"], CONF)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["task.max_steps=9"], "task.prompt_length"), (["task.gen_length=20"], "task.gen_length"),
     (["task.min_steps=4", "task.max_steps=3"], "task.min_steps")],
)
def test_bad_task_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_task(compose_cfg(*overrides).task)


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


# Real-model presets: (family, Hub id spelled as in docs/users.md "Ecosystem conventions"). Every other
# conf/model file is the tiny teacher or its student.
REAL_PRESETS = {
    "llada_8b_instruct": ("llada", "GSAI-ML/LLaDA-8B-Instruct"),
    "dream_7b_instruct": ("dream", "Dream-org/Dream-v0-Instruct-7B"),
    "d3llm_llada": ("llada", "d3LLM/d3LLM_LLaDA"),
    "d3llm_dream": ("dream", "d3LLM/d3LLM_Dream"),
    "dparallel_llada": ("llada", "Zigeng/dParallel-LLaDA-8B-instruct"),
}


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_config_validates(model):
    section = load_section(compose_cfg(f"model={model}").model, ModelConfig, "model")
    if model in REAL_PRESETS:
        assert (section.family, section.path) == REAL_PRESETS[model]
        assert section.dtype == "bfloat16" and section.backend == "native"
    else:
        assert section.family == "tiny"


@pytest.mark.parametrize("preset", sorted(REAL_PRESETS))
def test_every_real_model_preset_fails_offline_with_one_line(preset, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (conftest) and not in the HF cache: one line saying so, with both ways out."""
    from huggingface_hub import constants

    from d3llm_pipeline.errors import PipelineError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    from d3llm_pipeline.stages.common import load_model

    model = load_section(compose_cfg(f"model={preset}").model, ModelConfig, "model")
    with pytest.raises(PipelineError) as err:
        load_model(model)
    hub_id = REAL_PRESETS[preset][1]
    assert str(err.value) == (f"model.path={hub_id} is a Hub id that is not in the local cache and the Hub is "
                              f"offline; download it (HF_HUB_OFFLINE=0 hf download {hub_id}) or pass a "
                              "local dir with model.path=<dir>")


@pytest.mark.parametrize(
    ("override", "key"),
    [("distill.masking=oracle", "distill.masking"), ("distill.curriculum.mask_ratio=cosine", "distill.curriculum"),
     ("distill.curriculum.r_min=0.9", "distill.curriculum"), ("distill.lora.r=0", "distill.lora.r")],
)
def test_bad_distill_values_name_the_key(override, key):
    from d3llm_pipeline.config.schema import DistillConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(compose_cfg("stage=distill", override).distill, DistillConfig, "distill")


ABLATION_FILES = sorted(p.stem.removeprefix("ablation_") for p in (CONF / "experiment").glob("ablation_*.yaml"))


def test_every_ablation_variant_has_an_experiment_file():
    from d3llm_pipeline.config.stage_schemas import ABLATION_VARIANTS, AblationStageConfig

    assert ABLATION_FILES == sorted(ABLATION_VARIANTS)
    stage = load_section(compose_cfg("stage=ablation").stage, AblationStageConfig, "stage")
    assert stage.variants == list(ABLATION_VARIANTS) and stage.reference_threshold in stage.thresholds


@pytest.mark.parametrize("variant", ABLATION_FILES)
@pytest.mark.parametrize("stage", ["eval", "distill"])
def test_ablation_experiments_compose_for_eval_and_distill(variant, stage):
    from d3llm_pipeline.config.schema import DistillConfig
    from d3llm_pipeline.config.stage_schemas import ABLATION_VARIANTS, DistillStageConfig, EvalStageConfig

    overrides = [f"stage={stage}", f"experiment=ablation_{variant}"] + (["model=student"] if stage == "eval" else [])
    cfg = compose_cfg(*overrides)
    load_section(cfg.stage, {"eval": EvalStageConfig, "distill": DistillStageConfig}[stage], "stage")
    dec = load_section(cfg.decode, DecodeConfig, "decode")
    distill = load_section(cfg.distill, DistillConfig, "distill")
    default = compose_cfg(*overrides[:1], *overrides[2:])
    # A distillation variant trains (and evaluates) its own student; a decoding variant reuses the default one.
    student = cfg.stage.out_dir if stage == "distill" else cfg.model.path
    default_student = default.stage.out_dir if stage == "distill" else default.model.path
    if ABLATION_VARIANTS[variant][0] == "distill":
        assert f"/ablation/{variant}/student" in student and (dec.rule, dec.kv_cache, dec.early_stop) == (
            "d3llm", False, True)
    else:
        assert student == default_student and distill.name == "d3llm" and distill.masking == "trajectory"
    # The one delta each variant stands for.
    expected = {
        "full": (dec.rule, dec.kv_cache, dec.early_stop) == ("d3llm", False, True),
        "random_masking": distill.masking == "random" and distill.curriculum.mask_ratio == "linear",
        "no_mask_ratio_curriculum": (distill.curriculum.mask_ratio, distill.curriculum.r_min,
                                     distill.curriculum.r_max) == ("off", 0.0, 0.8),
        "no_window_curriculum": (distill.curriculum.window, distill.curriculum.fixed_window) == ("off", 16),
        "no_complementary_loss": (distill.loss.complementary, distill.loss.entropy_weight) == (False, 2.0),
        "no_entropy_loss": (distill.loss.complementary, distill.loss.entropy_weight) == (True, 0.0),
        "dparallel": distill.name == "dparallel",
        "single_block": (dec.rule, dec.early_stop) == ("threshold", True),
        "kv_cache": (dec.rule, dec.kv_cache, dec.cache_delay_iter, dec.refresh_interval, dec.cache_plan) == (
            "d3llm", True, 1, None, "reference"),
        "no_early_stop": (dec.rule, dec.early_stop) == ("d3llm", False),
    }
    assert expected[variant]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["stage.variants=[full,fancy]"], "stage.variants"), (["stage.variants=[]"], "stage.variants"),
     (["stage.reference_threshold=0.7"], "stage.reference_threshold"),
     (["stage.thresholds=[0.5,-1]"], "stage.thresholds"), (["+stage.step_overrides.report=[]"], "stage.step_overrides")],
)
def test_bad_ablation_values_name_the_key(overrides, key):
    from d3llm_pipeline.config.stage_schemas import AblationStageConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_section(compose_cfg("stage=ablation", *overrides).stage, AblationStageConfig, "stage")


@pytest.mark.parametrize(("preset", "rule"), [("sweep_threshold", "threshold"), ("sweep_d3llm", "d3llm")])
def test_sweep_presets_are_multiruns_over_explicit_thresholds(preset, rule):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["paths.root_dir=/x", "stage=eval", f"experiment={preset}"],
                      return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and load_section(cfg.decode, DecodeConfig, "decode").rule == rule
    taus = [float(t) for t in str(cfg.hydra.sweeper.params["decode.threshold"]).split(",")]
    assert taus == [0.05, 0.2, 0.3, 0.5, 0.6, 1.0, 1.5, 2.2]  # = stage=pipeline's list, so curves compare
    assert taus == list(compose_cfg("stage=pipeline").stage.thresholds)


def test_an_experiments_step_defaults_come_before_the_command_lines_step_overrides():
    from d3llm_pipeline.stages.steps import step_extras

    cfg = compose_cfg("stage=pipeline", "+step_defaults.eval=['stage.limit=250']",
                      "+step_defaults.trajectory=['stage.n_prompts=1000']", "stage.step_overrides.eval=['stage.limit=8']")
    assert step_extras(cfg, "eval") == ["stage.limit=250", "stage.limit=8"]  # the later one (command line) wins
    assert step_extras(cfg, "trajectory") == ["stage.n_prompts=1000"] and step_extras(cfg, "distill") == []


@pytest.mark.parametrize("override", ["+step_defaults.report=[]", "+step_defaults.eval=['stage.limit']"])
def test_bad_step_defaults_name_the_key(override):
    from d3llm_pipeline.config.validate import validate_config

    with pytest.raises(ConfigError, match="step_defaults"):
        validate_config(compose_cfg("stage=pipeline", override))


def test_step_defaults_accept_hydra_deletions():
    from d3llm_pipeline.config.validate import validate_config

    validate_config(compose_cfg("stage=pipeline", "+step_defaults.eval=['~stage.limit']"))  # no "=", still valid


def test_the_code_execution_opt_in_is_accepted_by_every_task_kind(tmp_path):
    """One command line opts in for a suite's code benchmarks: every kind takes task.allow_code_execution, a mixed
    sweep validates, and where no code runs it is not part of the task's identity (artifacts stay reusable)."""
    from d3llm_pipeline.config.preflight import check_command_line
    from d3llm_pipeline.config.schema import load_task

    for task in ("arith", "arith_long", "roster", "dparallel_prompts", "humaneval"):
        allowed = load_task(compose_cfg(f"task={task}", "task.allow_code_execution=true").task)
        plain = load_task(compose_cfg(f"task={task}").task)
        assert allowed.allow_code_execution is True
        assert (allowed.identity() == plain.identity()) is (task != "humaneval")
    check_command_line(["-m", "stage=eval", "task=arith,humaneval", "task.allow_code_execution=true",
                        f"paths.root_dir={tmp_path}"], CONF)


def test_a_dated_run_dir_is_claimed_fresh_and_a_named_one_is_left_alone(tmp_path, monkeypatch):
    """Two runs started in the same second resolve the same dated run dir; the entry point hands the second one
    `<dir>_2` (what Hydra then writes into). A dir the command line names is the user's choice: left as it is."""
    from d3llm_pipeline.__main__ import fresh_run_dir
    from d3llm_pipeline.config.preflight import check_command_line

    for name in ("RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    checked = check_command_line(["stage=eval", f"paths.root_dir={tmp_path}"], CONF)
    key, dated = checked.dated
    assert key == "hydra.run.dir" and dated.startswith(str(tmp_path / "outputs" / "runs" / "eval") + "/")
    assert fresh_run_dir(checked) == [f'hydra.run.dir="{dated}"'] and Path(dated).is_dir()
    assert fresh_run_dir(checked) == [f'hydra.run.dir="{dated}_2"']  # the same second again
    sweep = check_command_line(["-m", "stage=eval", "decode.threshold=0.1,0.2", f"paths.root_dir={tmp_path}"], CONF)
    assert sweep.dated[0] == "hydra.sweep.dir" and "/multirun/eval/" in sweep.dated[1]
    named = check_command_line(["stage=eval", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'mine'}"],
                               CONF)
    assert named.dated is None and fresh_run_dir(named) == []
    monkeypatch.setenv("RANK", "1")  # a rank of a torchrun job: all ranks resolve the one dir
    assert fresh_run_dir(checked) == []

