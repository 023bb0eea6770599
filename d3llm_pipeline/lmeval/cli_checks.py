"""What `d3llm-lm-eval` checks before handing over to lm-eval: the mistakes lm-eval itself would meet only after
indexing its ~14k task files and loading the model (10-40 s), each as one PipelineError line.

    check_command_line(["--model", "d3llm", "--model_args", "pretrained=ckpt", "--tasks", "d3llm_gsm8k"])

For `--model d3llm` (lm-eval's own models are lm-eval's business): the checkpoint (`pretrained` or a `preset`'s
path) exists, holds a config.json and a tokenizer; for each of OUR benchmark tasks in `--tasks`: its data loads
(the `--metadata` data_files, the bundled HumanEval, or the Hub / its cache: offline without a copy fails here,
within seconds, instead of after lm-eval's Hub retries). Nothing here imports torch; `__main__` runs it first.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import yaml

from d3llm_pipeline.errors import ConfigError
from d3llm_pipeline.lmeval import TASKS_DIR


def lmeval_args(argv: list[str]) -> argparse.Namespace | None:
    """lm-eval's own parse of `argv` (its `run` subcommand, inserted as lm-eval does for the legacy form), or None
    when it is another subcommand or lm-eval's parser would reject it (lm-eval then prints its usage itself)."""
    from lm_eval._cli import HarnessCLI

    cli = HarnessCLI()
    choices = cli._subparsers.choices
    if argv and argv[0] not in choices and len(argv) > 1:
        argv = ["run", *argv]
    if not argv or argv[0] != "run" or any(a in ("-h", "--help") for a in argv):
        return None
    try:
        return cli._parser.parse_args(argv)
    except SystemExit:
        return None


class _IgnoreTags(yaml.SafeLoader):
    """lm-eval task YAMLs carry `!function module.name` tags: read as plain strings here."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


@functools.cache
def benchmark_of_tasks() -> dict[str, str]:
    """{our lm-eval task name: its benchmark dataset (tasks/benchmarks.py DATASETS key)}, `include:`s followed."""
    raw = {}
    for path in sorted((TASKS_DIR / "benchmarks").glob("*.yaml")):
        raw[path.name] = yaml.load(path.read_text(), Loader=_IgnoreTags) or {}

    def benchmark(doc: dict) -> str | None:
        kwargs = doc.get("dataset_kwargs") or {}
        if "benchmark" in kwargs:
            return kwargs["benchmark"]
        parent = raw.get(doc.get("include", ""))
        return benchmark(parent) if parent else None

    return {doc["task"]: name for doc in raw.values() if "task" in doc and (name := benchmark(doc))}


def check_checkpoint(model_args: dict[str, Any]) -> None:
    """pretrained= (or preset='s path) is a checkpoint dir with a config.json and tokenizer files."""
    from d3llm_pipeline.models.families.checkpoint import has_tokenizer_files, read_config

    pretrained, preset = model_args.get("pretrained"), model_args.get("preset")
    if pretrained is not None and str(pretrained).endswith((".yaml", ".yml")):
        preset, pretrained = pretrained, None
    key = "model_args pretrained"
    if pretrained is None and preset is not None:
        from d3llm_pipeline.config.decode_presets import model_section

        pretrained = model_section(str(preset)).get("path")  # pretrained= would override it
    if pretrained is None:
        raise ConfigError("model_args needs pretrained=<checkpoint dir> or preset=<conf/model name>")
    path, _ = read_config(str(pretrained), key)
    if not has_tokenizer_files(path):
        raise ConfigError(f"{key}={path} holds no tokenizer (tokenizer.json / tokenizer_config.json / vocab.json), "
                          "which lm-eval needs to encode its prompts; add the checkpoint's tokenizer files to that dir")


def check_task_data(tasks: list[str], metadata: dict[str, Any]) -> None:
    """Each of our benchmark tasks finds its data (benchmarks.load_splits raises the one-line ConfigError)."""
    from d3llm_pipeline.tasks import benchmarks

    ours = benchmark_of_tasks()
    for task in tasks:
        if task in ours:
            benchmarks.load_splits(ours[task], metadata.get("data_files"))


def check_command_line(argv: list[str]) -> None:
    args = lmeval_args(argv)
    if args is None or args.model != "d3llm":
        return
    check_checkpoint(dict(args.model_args or {}))
    tasks = [t for item in (args.tasks or []) for t in str(item).split(",") if t]
    check_task_data(tasks, dict(args.metadata or {}))
