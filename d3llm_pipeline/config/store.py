"""The schemas as Hydra sees them: each group's dataclass registered in Hydra's ConfigStore, so a preset YAML names
its schema in its defaults list and holds only what differs from it (Hydra's structured-config pattern).

    conf/decode/threshold.yaml:   defaults: [_base, _self_]  (decode/_base.yaml: [_schema, _self_])
    conf/model/llada_8b_instruct.yaml: defaults: [_schema, /decode_table/llada@decode_table, _self_]
    conf/task/arith.yaml:         defaults: [_arith, _self_]           (one schema per task.kind)
    conf/stage/teacher.yaml:      defaults: [/stage/_teacher@stage, _self_]   (a `_global_` file)

Registered names start with `_`: they are schemas, not options to choose on the command line. `register()` runs
when d3llm_pipeline.config is imported (the entry point, the lm-eval presets and tests all import it first).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from d3llm_pipeline.config.schema import DecodeConfig, DistillConfig, ModelConfig, SuiteConfig
from d3llm_pipeline.config.stage_schemas import STAGE_SCHEMAS
from d3llm_pipeline.tasks.base import task_class, task_kinds


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="decode", name="_schema", node=DecodeConfig)
    store.store(group="model", name="_schema", node=ModelConfig)
    store.store(group="distill", name="_schema", node=DistillConfig)
    store.store(group="suite", name="_schema", node=SuiteConfig)
    for kind in task_kinds():
        store.store(group="task", name=f"_{kind}", node=task_class(kind))
    for name, schema in STAGE_SCHEMAS.items():
        store.store(group="stage", name=f"_{name}", node=schema)
