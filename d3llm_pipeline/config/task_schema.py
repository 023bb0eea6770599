"""The `task` group's kinds: the embedded arith task (config/schema.py ArithTaskConfig), a benchmark run through
lm-eval (BenchmarkTaskConfig, conf/task/{gsm8k_cot,math,humaneval,mbpp,long_gsm8k}.yaml) and a prompt set that
stage=trajectory labels for distillation (PromptSetTaskConfig, conf/task/{dparallel_prompts,gsm8k_prompts}.yaml).

    task = load_task(cfg.task)                    # ArithTaskConfig or BenchmarkTaskConfig, by task.kind
    setting = task.for_family("llada")            # lm-eval task, shots, chat template for that model family

A benchmark preset names a default lm-eval task / shot count / chat-template use and per-family variants
(method.md §9.1: e.g. MATH is 4-shot for LLaDA and 0-shot for Dream). A value set on the task itself
(`task.num_fewshot=2`) wins over the family's; null means "the family's, else the default".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.config.schema import ArithTaskConfig, check, load_section

KINDS = ("arith", "benchmark", "prompts")


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
class BenchmarkTaskConfig:
    kind: str = "benchmark"
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

    def __post_init__(self) -> None:
        from d3llm_pipeline.tasks.benchmarks import dataset_of

        check(self.kind == "benchmark", f"task.kind must be benchmark here, got {self.kind!r}")
        dataset_of(self.dataset)
        check(self.gen_length >= 1, f"task.gen_length must be >= 1, got {self.gen_length}")
        check(self.num_fewshot is None or self.num_fewshot >= 0,
               f"task.num_fewshot must be >= 0 or null, got {self.num_fewshot}")
        check("default" in self.families or self.lmeval_task is not None,
               "task.families.default.lmeval_task (or task.lmeval_task) must name the lm-eval task to run")

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


@dataclass
class PromptSetTaskConfig:
    """Questions + ground-truth answers for the teacher to label (method.md §1.1; tasks/prompt_sets.py)."""

    kind: str = "prompts"
    name: str = "prompts"
    source: str = ""  # a Hub dataset id (its cache offline), or the name shown for task.data_files
    config: str | None = None  # the Hub dataset's config (gsm8k: main)
    split: str = "train"
    data_files: Any = None  # a local copy: <file of the split> or {split: file}
    question_field: str = "question"
    answer_field: str = "gt_answer"
    answer_format: str = "boxed"  # boxed (method.md §1.3) | gsm8k ("#### N") | none (keep every sample)
    chat_template: bool | None = None  # null: the family's (families.<family>.chat_template, else false)
    prompt_length: int = 256  # prompts are left-padded (or cut from the left) to this many tokens
    gen_length: int = 256
    families: dict[str, dict[str, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from d3llm_pipeline.tasks.prompt_sets import ANSWER_FORMATS

        check(self.kind == "prompts", f"task.kind must be prompts here, got {self.kind!r}")
        check(bool(self.source) or self.data_files is not None,
               "task.source must name a Hub dataset (e.g. Zigeng/dParallel_LLaDA_Distill_Data) or task.data_files "
               "a local copy")
        check(self.answer_format in ANSWER_FORMATS,
               f"task.answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        check(self.prompt_length >= 1 and self.gen_length >= 1,
               f"task.prompt_length and task.gen_length must be >= 1, got {self.prompt_length}, {self.gen_length}")

    def chat_for(self, family: str) -> bool:
        if self.chat_template is not None:
            return self.chat_template
        return bool(self.families.get(family, {}).get("chat_template", False))


# Keys added to a task schema after artifacts were fingerprinted with it, at the value that means "as before":
# left out of fingerprints at that value, so existing teachers and trajectories stay reusable.
_LATE_KEYS = {"problems_per_sample": 1}


def task_identity(task: Any) -> dict[str, Any]:
    """The task section as it enters artifact fingerprints (asdict, minus late-added keys at their neutral value)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(task).items() if not (k in _LATE_KEYS and v == _LATE_KEYS[k])}


def task_schema(section: DictConfig | dict[str, Any]) -> type:
    """The schema of a task section, chosen by its `kind` (arith when absent)."""
    kind = section.get("kind", "arith") if section is not None else "arith"
    check(kind in KINDS, f"task.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return {"benchmark": BenchmarkTaskConfig, "prompts": PromptSetTaskConfig}.get(kind, ArithTaskConfig)


def load_task(section: DictConfig | dict[str, Any]) -> ArithTaskConfig | BenchmarkTaskConfig | PromptSetTaskConfig:
    return load_section(section, task_schema(section), "task")


def is_benchmark(section: DictConfig | dict[str, Any]) -> bool:
    return task_schema(section) is BenchmarkTaskConfig
