"""The entry point's pre-flight: compose and validate every job of a command line before Hydra starts anything.

    checked = check_command_line(sys.argv[1:], CONF_DIR)   # -> Preflight(debug, dated), or raises ConfigError

For a single run it composes the command line's config and validates it (config/validate.py). For a multirun
(`-m`, or `hydra.mode: MULTIRUN` from an experiment preset) it expands the sweep exactly as Hydra's BasicSweeper
will (`hydra.sweeper.params`, then the command line's overrides, later keys replacing earlier ones) and validates
every point, so a bad point stops the sweep before its first job runs, with a message naming the point. Hydra's
own composition errors (an unknown group option or key, override syntax, a sweep without -m) become one line each
here too, instead of Hydra's multi-line dumps. Also checked: the run / sweep dir can be written and is not a
directory the pipeline did not make (ownership.py). When that dir is named by the clock (`${now:...}`, the
default), `dated` says which it is, so the entry point can make it unique (runtime.fresh_dir: two runs started in
the same second would otherwise write into one dir).

Only plain invocations are checked; a command line with other Hydra flags (--help, --cfg, -cn, --config-dir, ...)
is left to Hydra. Failures only a job can discover (a missing artifact, a corrupt file) are the job's to report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from d3llm_pipeline.config.validate import TRAINER_RESERVED, validate_config
from d3llm_pipeline.errors import ConfigError, PipelineError, first_line

MULTIRUN_FLAGS = ("-m", "--multirun")
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


class Preflight(NamedTuple):
    """What the pre-flight found: the config's `debug` flag, and (key, dir) of a run / sweep dir named by the clock
    (None when the command line or an experiment names the dir: a rerun may mean to write into it again)."""

    debug: bool
    dated: tuple[str, str] | None = None


def is_plain(argv: list[str]) -> bool:
    """Overrides only (plus -m): anything else is a Hydra flag the pre-flight leaves to Hydra."""
    return all(not arg.startswith("-") or arg in MULTIRUN_FLAGS for arg in argv)


def _options(conf_dir: Path, group: str, known: list[str] | None) -> list[str]:
    """A group's options to choose from (`_`-names are schemas and bases, config/store.py, not options)."""
    names = known or [p.stem for p in (conf_dir / group).glob("*.yaml")]
    return sorted(name for name in names if not name.startswith("_"))


def _parse_error(err: OverrideParseException) -> ConfigError:
    reasons = [line for line in str(err.message).splitlines()
               if line.strip() and not line.startswith(("Error parsing override", "See https"))]
    reason = reasons[0] if reasons else "syntax error"
    return ConfigError(f"cannot parse the override {err.override!r}: {reason}; write key=value (quote values with "
                       f"spaces or commas: key='a,b'), see {GRAMMAR}")


class _Composer:
    """compose() with every Hydra / OmegaConf failure turned into one ConfigError line."""

    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = conf_dir

    def __call__(self, overrides: list[str]) -> DictConfig:
        try:
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
        except MissingConfigException as err:
            raise self._missing_option(err) from None
        except OverrideParseException as err:
            raise _parse_error(err) from None
        except ConfigCompositionException as err:
            raise self._composition_error(err, overrides) from None
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            raise ConfigError(" ".join(str(err).split())) from None

    def _missing_option(self, err: MissingConfigException) -> ConfigError:
        group, _, choice = str(err.missing_cfg_file).rpartition("/")
        if not group:  # not a group option (the primary config itself)
            return ConfigError(" ".join(str(err).split()))
        options = _options(self.conf_dir, group, getattr(err, "options", None))
        return ConfigError(f"unknown {group} {choice!r}; choose {group}= one of: {', '.join(options)}")

    def _composition_error(self, err: ConfigCompositionException, overrides: list[str]) -> ConfigError:
        text = str(err)
        merging = re.match(r"Error merging override (\S+)", text)
        if merging:  # a value the schema's type rejects (config/schema.py): the key and OmegaConf's reason
            override = merging.group(1)
            reason = first_line(err.__cause__) if err.__cause__ is not None else "a value of the wrong type"
            return ConfigError(f"{override.lstrip('+~').split('=', 1)[0]}: {reason} (in {override!r})")
        found = re.match(r"Could not override '([^']+)'", text)
        if not found:  # e.g. "Multiple values for decode" from +decode=x
            return ConfigError(f"{text.splitlines()[0]}" + (" (drop the '+')" if "Multiple values" in text else ""))
        key = found.group(1)
        override = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
        parent, _, name = key.rpartition(".")
        if parent == "trainer" and name in TRAINER_RESERVED:
            return ConfigError(f"trainer.{name} is set by the training stages themselves; use "
                               f"{TRAINER_RESERVED[name]} instead and drop trainer.{name}")
        if parent == "trainer":
            return ConfigError(f"trainer.{name} is not set in conf/trainer/; add a lightning.Trainer argument with "
                               f"+{override.lstrip('+~')}")
        return ConfigError(f"unknown key {key!r} in {override!r}{self._valid_keys(parent, overrides, override)}")

    def _valid_keys(self, parent: str, overrides: list[str], bad: str) -> str:
        """'; <parent> holds: a, b, c' from the config composed without the bad override ('' if that fails)."""
        if parent.split(".")[0] == "hydra":
            return "; see `python -m d3llm_pipeline --hydra-help`"
        try:
            cfg = compose(config_name="config", overrides=[o for o in overrides if o != bad])
            node = OmegaConf.select(cfg, parent) if parent else cfg
        except Exception:  # noqa: BLE001 - the list is a courtesy; the error line stands without it
            return ""
        if not isinstance(node, DictConfig):
            return f"; {parent} holds no keys"
        return f"; {parent or 'the top level'} holds: {', '.join(sorted(str(k) for k in node.keys()))}"


def _sweeper_params(master: DictConfig) -> list[str]:
    """hydra.sweeper.params (set by sweep presets) as overrides, e.g. ['decode.threshold=0.05,0.2']."""
    params = master.hydra.sweeper.get("params")
    if not params:
        return []
    return [f"{key}={value}" for key, value in OmegaConf.to_container(params, resolve=False).items()]


def _expand_sweep(master: DictConfig, task_overrides: list[str], parser: OverridesParser) -> list[list[str]]:
    """Each job's overrides, as hydra's BasicSweeper computes them (preset params first, command line after)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params_conf = _sweeper_params(master) + list(task_overrides)
    try:
        return BasicSweeper.split_arguments(parser.parse_overrides(params_conf), None)[0]
    except OverrideParseException as err:
        raise _parse_error(err) from None
    except HydraException as err:  # e.g. an interval sweep, which BasicSweeper cannot expand
        lines = [o.input_line for o in parser.parse_overrides(params_conf)
                 if o.is_sweep_override() and not o.is_discrete_sweep()]
        raise ConfigError(f"{lines[0] if lines else 'sweep'}: {' '.join(str(err).split())}; list the values "
                          "(key=a,b,c) or use range(start,stop,step)") from None


def _check_output_dir(cfg: DictConfig, key: str) -> str | None:
    """The run / sweep dir can be written and is new, empty or a run dir of ours (Hydra writes into it before any
    stage code runs, so this is the only place a foreign one can be caught untouched)."""
    from d3llm_pipeline.ownership import check_ours, require_writable

    try:
        directory = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException:  # e.g. ${hydra:...} needs a running app; Hydra reports those itself
        return
    if directory:
        require_writable(directory, key)
        check_ours(directory, "run", key)
    return directory or None


def _dated(cfg: DictConfig, key: str) -> tuple[str, str] | None:
    """(key, its dir) when the run / sweep dir is named by the clock (the default ${now:...} pattern), else None."""
    directory = _check_output_dir(cfg, key)
    group, name = key.rsplit(".", 1)
    raw = OmegaConf.to_container(OmegaConf.select(cfg, group), resolve=False).get(name)
    return (key, str(directory)) if directory and "${now:" in str(raw) else None


def check_command_line(argv: list[str], conf_dir: str | Path) -> Preflight:
    """Validate the job(s) `argv` would run; returns the config's `debug` flag and its dated run / sweep dir
    (Preflight). Raises ConfigError."""
    conf_dir = Path(conf_dir)
    multirun = any(arg in MULTIRUN_FLAGS for arg in argv)
    args = [arg for arg in argv if arg not in MULTIRUN_FLAGS]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args)
    except OverrideParseException as err:
        raise _parse_error(err) from None
    for override in parsed:
        if not override.get_key_element().lstrip("+~"):
            raise ConfigError(f"cannot parse the override {override.input_line!r}: no key before '='; write "
                              f"key=value, see {GRAMMAR}")
    sweeps = [o for o in parsed if o.is_sweep_override()]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        composer = _Composer(conf_dir)
        master = composer(fixed)
        multirun = multirun or str(master.hydra.mode) == "RunMode.MULTIRUN"
        if not multirun:
            if sweeps:
                line = sweeps[0].input_line
                raise ConfigError(f"{line} sweeps over several values: add -m (python -m d3llm_pipeline -m ...) to "
                                  f"run one job per value, or write {sweeps[0].get_key_element()}=[...] for a list")
            validate_config(master)
            return Preflight(bool(master.get("debug", False)), _dated(master, "hydra.run.dir"))
        hydra_sweeps = [o.input_line for o in sweeps if o.is_hydra_override()]
        if hydra_sweeps:
            raise ConfigError(f"{hydra_sweeps[0]}: Hydra's own settings cannot be swept; give it one value")
        if "BasicSweeper" not in str(master.hydra.sweeper.get("_target_", "")):  # another sweeper plans its own jobs
            validate_config(master)
            return Preflight(bool(master.get("debug", False)))
        hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
        task_overrides = [o.input_line for o in parsed if not o.is_hydra_override()]
        jobs = _expand_sweep(master, task_overrides, parser)
        swept = _swept_keys(master, task_overrides, parser)
        for number, job in enumerate(jobs):
            point = " ".join(o for o in job if o.split("=", 1)[0] in swept) or "(no swept key)"
            try:
                validate_config(composer([*hydra_overrides, *job]))
            except PipelineError as err:
                raise ConfigError(f"sweep job #{number} ({point}): {err}") from None
        return Preflight(bool(master.get("debug", False)), _dated(master, "hydra.sweep.dir"))


def _swept_keys(master: DictConfig, task_overrides: list[str], parser: OverridesParser) -> set[str]:
    lines = _sweeper_params(master) + list(task_overrides)
    swept = {o.get_key_element() for o in parser.parse_overrides(lines) if o.is_sweep_override()}
    # a later single value replaces an earlier sweep of the same key (as in the sweeper)
    for o in parser.parse_overrides(list(task_overrides)):
        if not o.is_sweep_override():
            swept.discard(o.get_key_element())
    return swept
