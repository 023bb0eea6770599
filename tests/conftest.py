"""Shared test setup: offline hubs, one torch thread (tests run beside other work), small fixtures."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import d3llm_pipeline.config  # noqa: E402,F401  (the schemas and resolvers every compose of conf/ needs)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the checkout
CONF = ROOT / "conf"


def official_fixtures() -> Path:
    """The official-format fixtures (LLaDA / Dream tiny checkpoints and what the official code computed on them): the
    copy in tests/fixtures/official/ (its README says where they come from), or $D3LLM_OFFICIAL_FIXTURES. They
    ship with the repository, so a missing dir fails the suite: the parity tests never skip."""
    where = Path(os.environ.get("D3LLM_OFFICIAL_FIXTURES") or Path(__file__).resolve().parent / "fixtures" / "official")
    if not (where / "llada_tiny" / "config.json").is_file() or not (where / "dream_tiny" / "config.json").is_file():
        raise pytest.UsageError(f"the official-format fixtures are missing from {where} (llada_tiny/, dream_tiny/); "
                                "restore tests/fixtures/official from git, or point D3LLM_OFFICIAL_FIXTURES at a copy")
    return where


OFFICIAL = official_fixtures()


def compose_at(root: Path, *overrides: str):
    """The composed config of `python -m d3llm_pipeline <overrides>` run with `root` as paths.root_dir."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.root_dir={root}", "threads=1", *overrides])


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m d3llm_pipeline <args>` from `root` (paths default to <root>/outputs), offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("D3LLM_ROOT", None)
    env.pop("D3LLM_ARTIFACTS", None)
    return subprocess.run([sys.executable, "-m", "d3llm_pipeline", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=root)


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(root: Path, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """`python -m d3llm_pipeline <args>` run in this process from `root` through the CLI's own entry function
    (pre-flight, Hydra, run_stage), with its exit code, stdout and stderr: a CLI start without the ~3 s of imports.
    `env` entries are set for the call (None values unset)."""
    import contextlib
    import io

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from d3llm_pipeline.__main__ import cli

    changes = {"D3LLM_ROOT": None, "D3LLM_ARTIFACTS": None, "HYDRA_FULL_ERROR": None, **(env or {})}
    saved_env = {key: os.environ.get(key) for key in changes}
    out, err, cwd, code = io.StringIO(), io.StringIO(), os.getcwd(), 0
    root_logger = logging.getLogger()
    saved_handlers, saved_level = list(root_logger.handlers), root_logger.level
    try:
        for key, value in changes.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        os.chdir(root)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - an uncaught error: what the real CLI prints (a traceback) and exits 1 with
        import traceback

        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(cwd)
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        HydraConfig.instance().cfg = None  # no Hydra app runs any more (stages ask HydraConfig for one)
        GlobalHydra.instance().clear()
        for handler in set(root_logger.handlers) - set(saved_handlers):  # Hydra's console + run-dir log file
            handler.close()
        root_logger.handlers[:] = saved_handlers
        root_logger.setLevel(saved_level)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def distill_workspace(tmp_path_factory) -> Path:
    """<root>/outputs/artifacts/{teacher, trajectories/tiny-teacher}: a random 1-layer teacher and 48 of its
    trajectories (the teacher is bad; only the mechanics of distillation matter)."""
    from d3llm_pipeline.models.tiny import build_tiny_teacher, save_tiny_teacher
    from d3llm_pipeline.stages import call_stage
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("distill")
    tok = build_tokenizer()
    teacher = build_tiny_teacher(tok, max_positions=88, n_embd=32, n_layer=1, n_head=2, seed=0)
    save_tiny_teacher(teacher, tok, root / "outputs" / "artifacts" / "teacher")
    call_stage(compose_at(root, "stage=trajectory", "stage.n_prompts=48", "task.n_train=100",
                          f"+output_dir={root / 'run_traj'}"))
    return root


@pytest.fixture
def tokenizer():
    from d3llm_pipeline.tasks.tokenizer import build_tokenizer

    return build_tokenizer()


# A tiny randomly initialised bidirectional GPT-2 (float64) for decoder tests: ids MASK=1, EOS=2, PAD=0, V=20.
MASK, EOS, PAD, VOCAB = 1, 2, 0, 20


@pytest.fixture(scope="module")
def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    from d3llm_pipeline.models.adapter import HFDiffusionAdapter

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        is_causal=False,
        initializer_range=0.2,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():
        # Point EOS's (tied) embedding along the mean of the others so some samples end early and early
        # stopping has something to do; the scale was picked so that only some of the test prompts stop.
        wte = model.transformer.wte.weight
        mean = wte[3:].mean(0)
        wte[EOS] = 1.5 * mean / mean.norm() * wte[3:].norm(dim=-1).mean()
    return HFDiffusionAdapter(model, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (5, 6), generator=g)


