"""logger=csv keeps what an earlier part of a resumed run logged (Lightning's CSVLogger would delete it).

Run: .venv/bin/python -m pytest -q tests/unit/test_loggers.py
"""

import csv
import warnings

from omegaconf import OmegaConf

from d3llm_pipeline.training.loggers import make_lightning_logger


def _resume(run_dir, step: int):
    """What a (re)started Lightning stage does with logger=csv in `run_dir`: make the logger, log a step, save."""
    cfg = OmegaConf.create({"logger": {"name": "csv"}, "output_dir": str(run_dir)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = make_lightning_logger(cfg, "distill")
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.save()
    return [str(w.message) for w in caught if "exists and is not empty" in str(w.message)]


def _steps(path) -> list[int]:
    with open(path) as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_a_resumed_runs_earlier_metrics_are_kept_as_numbered_parts(tmp_path):
    assert _resume(tmp_path, 3) == []
    logs = tmp_path / "csv"
    assert _steps(logs / "metrics.csv") == [3]
    assert _resume(tmp_path, 7) == []  # no "will be deleted" warning: nothing is
    assert _steps(logs / "metrics_part1.csv") == [3] and _steps(logs / "metrics.csv") == [7]
    _resume(tmp_path, 9)
    assert _steps(logs / "metrics_part1.csv") == [3]  # an older part is never overwritten
    assert _steps(logs / "metrics_part2.csv") == [7] and _steps(logs / "metrics.csv") == [9]
    assert sorted(p.name for p in logs.glob("metrics*.csv")) == ["metrics.csv", "metrics_part1.csv",
                                                                "metrics_part2.csv"]
