"""What a distillation job asks a cluster for (stages/launch.py distill_resources) and which trainer keys make a
training run's identity (training/fit.py trainer_identity): trainer.num_nodes in both, on composed configs."""

from __future__ import annotations

from conftest import compose_at

from d3llm_pipeline.stages.launch import SLURM_LAUNCHER, distill_resources
from d3llm_pipeline.training.fit import trainer_identity

LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def test_two_nodes_of_eight_gpus_are_sixteen_slurm_tasks_with_lightning_ddp(tmp_path):
    cfg = compose_at(tmp_path, "stage=distill", "trainer=ddp", "trainer.num_nodes=2")
    launcher, step = distill_resources(cfg, SLURM_LAUNCHER)
    assert launcher == ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=8", "hydra.launcher.gpus_per_node=8"]
    assert step == ["trainer.strategy=ddp"]  # Slurm starts the ranks: ddp_spawn would start them again
    assert distill_resources(cfg, LOCAL) == ([], [])  # a local job: Lightning starts its own ranks
    fsdp = compose_at(tmp_path, "stage=distill", "trainer=fsdp", "trainer.num_nodes=2")
    assert distill_resources(fsdp, SLURM_LAUNCHER)[1] == []  # fsdp already lets the launcher start the ranks


def test_one_node_is_not_part_of_a_run_s_identity_two_are(tmp_path):
    one = trainer_identity(compose_at(tmp_path, "stage=distill", "trainer=ddp"))
    assert one == {"trainer.devices": 8, "trainer.precision": "bf16-mixed"}  # as before the presets named num_nodes
    two = trainer_identity(compose_at(tmp_path, "stage=distill", "trainer=ddp", "trainer.num_nodes=2"))
    assert two == {**one, "trainer.num_nodes": 2}


def test_distillations_under_joblib_stay_in_the_pipeline_s_process():
    from d3llm_pipeline.stages.launch import JOBLIB_LAUNCHER, launched

    assert not launched("distill", JOBLIB_LAUNCHER)  # loky workers cannot start Lightning's DDP ranks
    assert launched("eval", JOBLIB_LAUNCHER) and launched("distill", SLURM_LAUNCHER) and launched("distill", LOCAL)
    assert not launched("eval", None)
