"""The config layer: schemas (schema.py, stage_schemas.py; registered with Hydra by store.py), whole-config
validation (validate.py), the command line's pre-flight (preflight.py), decode presets (decode_presets.py), and the
OmegaConf resolvers our YAML files use (here, registered on import):

`${decode_default:<key>[,<fallback>]}`: a decode knob's value for the model preset and task (decode_presets.py).

`${by_family:{tiny: 16, llada: 128, dream: 32}}`: the value for the run's model.family (a method whose settings
differ per model family, e.g. dParallel's LoRA rank, stays one file that works on top of any family's recipe).

`${cwd:}` is the directory the command was started from. (Hydra's `${hydra:runtime.cwd}` is not available when
the launcher resolves `hydra.sweep.dir`, so paths must not depend on it.)

`${per_job:<single>,<root>}` is where a training stage writes its product: `<single>` in a normal run, and
`<root>/<job name>` in each job of a Hydra multirun, the job name made from that job's overrides (so
`-m stage=distill distill.lora.r=4,16 stage.epochs=1` trains `students/distill.lora.r_4@<hash>` and
`students/distill.lora.r_16@<hash>`: the swept overrides, then a hash of the fixed ones, so one directory is
never written twice and a rerun of the same sweep finds its students again). Names use only characters a Hydra
override accepts unquoted (`key_value`, `+` between overrides, `-` inside lists), so
`model.path=outputs/artifacts/students/distill.lora.r_4@1a2b3c4d/merged` works as typed. Steps of stage=pipeline / stage=ablation (which set `output_dir`) use `<single>`.

`${sweep_group:<name>}` is the wandb group: `<name>` in a normal run, `<name>/<sweep dir name>` in the jobs of a
multirun, so one sweep's jobs and its end-of-sweep report sit together on a dashboard.
"""

import hashlib
import os
import re

from omegaconf import OmegaConf

from d3llm_pipeline.config.decode_presets import decode_default_resolver
from d3llm_pipeline.config.store import register as register_schemas

# Overrides that never shape a training artifact and would only clutter its directory name.
_UNNAMED = ("stage", "threads", "device", "logger", "hydra", "output_dir", "paths", "trainer.enable_progress_bar",
            "trainer.log_every_n_steps")
_MAX_NAME = 120


def job_dirname(overrides: list[str], swept: set[str] | None = None) -> str:
    """A directory name from a job's overrides.

    With `swept` (the keys the multirun varies), the name holds those overrides and a hash of the others
    ('distill.lora.r_4@1a2b3c4d'): short to read, and never shared by jobs of sweeps with other fixed settings.
    Without it, every override is spelled out. 'default' when nothing names the job.
    """
    named, fixed = [], []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.split("/", 1)[0] in _UNNAMED or key in _UNNAMED or key.startswith("hydra."):
            continue
        value = re.sub(r"[^A-Za-z0-9._@-]", "", value.replace(",", "-").replace("/", "_").replace(" ", ""))
        (named if swept is None or key in swept else fixed).append(f"{key.replace('/', '_')}_{value}")
    name = "+".join(sorted(named)) or "default"
    if fixed:
        name += "@" + hashlib.sha256(",".join(sorted(fixed)).encode()).hexdigest()[:8]
    if len(name) > _MAX_NAME:  # stay well under file-name limits, still unique
        name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def swept_keys(sweep_dir: str) -> set[str] | None:
    """The keys a multirun varies, read from the multirun.yaml Hydra writes before any job starts."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        sweep_cfg = OmegaConf.load(os.path.join(sweep_dir, "multirun.yaml"))
        overrides = [str(o) for o in sweep_cfg.hydra.overrides.task]
        params = sweep_cfg.hydra.sweeper.get("params") or {}
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - unreadable: fall back to naming jobs by every override
        return None
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()} | {str(k) for k in params}


def running_multirun():
    """The running Hydra job's config if it is a job of a multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # no Hydra app running (compose in tests, the pre-flight check)
        return None
    return hydra_cfg if hydra_cfg.mode == RunMode.MULTIRUN else None


def sweep_group(name: str, sweep_dir: str) -> str:
    return f"{name}/{os.path.basename(os.path.normpath(sweep_dir))}"


def _sweep_group(name: str) -> str:
    hydra_cfg = running_multirun()
    return name if hydra_cfg is None else sweep_group(name, hydra_cfg.sweep.dir)


def _per_job(single: str, root: str, *, _root_) -> str:
    if _root_.get("output_dir"):  # a step run inside stage=pipeline / ablation, or a test
        return single
    hydra_cfg = running_multirun()
    if hydra_cfg is None:
        return single
    return f"{root}/{job_dirname(list(hydra_cfg.overrides.task), swept_keys(hydra_cfg.sweep.dir))}"


def by_family(table, *, _root_) -> object:
    """${by_family:{<family>: <value>, ...}}: table[model.family]; a family the table lacks is one error line."""
    from d3llm_pipeline.errors import ConfigError

    family = _root_.model.family
    if family not in table:
        raise ConfigError(f"its by_family table has no value for model.family={family} (only {', '.join(table)}); "
                          "set the key on the command line or add the family to the table")
    return table[family]


def _on_gpu(accelerator) -> bool:
    """${on_gpu:${trainer.accelerator}}: whether a Lightning accelerator value trains on GPUs (stage defaults such
    as gradient checkpointing follow it: trainer=gpu|ddp|fsdp turn it on, trainer.accelerator=cpu keeps it off)."""
    return str(accelerator).lower() in ("gpu", "cuda")


def job_device(job_num: int | None, visible_gpus: int) -> str:
    """Multirun job `job_num`'s device on a node with `visible_gpus` GPUs: cuda:<job_num mod visible_gpus>, so N
    parallel shards spread over the GPUs (under Slurm each job sees its own GPU as cuda:0); auto without a GPU or
    outside a multirun."""
    if job_num is None or visible_gpus < 1:
        return "auto"
    return f"cuda:{job_num % visible_gpus}"


def _job_device() -> str:
    """${job_device:}: `device='${job_device:}'` gives each multirun job its own GPU (job_device)."""
    hydra_cfg = running_multirun()
    if hydra_cfg is None:
        return "auto"
    import torch  # only when the resolver is used: config validation must not pay for torch

    return job_device(int(hydra_cfg.job.num), torch.cuda.device_count())


if not OmegaConf.has_resolver("job_device"):
    OmegaConf.register_new_resolver("job_device", _job_device)
if not OmegaConf.has_resolver("on_gpu"):
    OmegaConf.register_new_resolver("on_gpu", _on_gpu)
if not OmegaConf.has_resolver("by_family"):
    OmegaConf.register_new_resolver("by_family", by_family)
if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", os.getcwd)
if not OmegaConf.has_resolver("per_job"):
    OmegaConf.register_new_resolver("per_job", _per_job)
if not OmegaConf.has_resolver("decode_default"):
    OmegaConf.register_new_resolver("decode_default", decode_default_resolver)

register_schemas()  # each group's schema in Hydra's ConfigStore (config/store.py)
if not OmegaConf.has_resolver("sweep_group"):
    OmegaConf.register_new_resolver("sweep_group", _sweep_group)
