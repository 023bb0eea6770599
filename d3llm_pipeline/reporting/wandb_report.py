"""Log an AUP report to Weights & Biases when `logger=wandb`: curves table, AUP line plot, leaderboard table.

    log_report(cfg, report)                                       # a no-op unless cfg.logger.name == "wandb"
    log_report(cfg, report, tables={"ablation": (columns, rows)})  # extra tables (stage=ablation's table)

Used by stage=report, stage=pipeline, stage=ablation and the Hydra multirun callback. Each report is one wandb
run (job_type=report, group=<experiment_name>, offline unless WANDB_MODE=online) holding:
- `report/curves`: a wandb.Table with one row per eval job (model, decoder, threshold, tpf, accuracy, aup), so
  a dashboard can group or filter by model and decoder;
- `report/aup_curve`: accuracy over TPF, one line per (model, decoder) (wandb.plot.line_series, a chart panel);
- `report/aup_curve_figure`: aup_curve.png as written beside the report (AUP and intervals in the legend);
- `report/leaderboard`: one row per curve (aggregate.leaderboard_rows), best AUP first;
- summary `aup/<model>/<decoder>` and `report/y_max`.
The numbers come from the same report dict as aup_points.csv / aup.json: the files stay the source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from d3llm_pipeline.reporting.aggregate import leaderboard_rows
from d3llm_pipeline.runtime import output_dir_of

CURVE_COLUMNS = ["model", "decoder", "threshold", "tpf", "accuracy", "aup"]


def curve_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per point of every curve, in CURVE_COLUMNS order (accuracy in percent)."""
    return [[c["model"], c["decoder"], p["threshold"], p["tpf"], p["accuracy"], c["aup"]]
            for c in report["curves"] for p in c["points"]]


def log_report(cfg: DictConfig, report: dict[str, Any],
               tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None) -> str | None:
    """Log `report` (aggregate.build_report's dict) as one wandb run; returns its id, or None when not logging."""
    if cfg.logger.get("name") != "wandb" or not report["curves"]:
        return None
    import wandb

    from d3llm_pipeline.training.loggers import init_wandb_run

    run = init_wandb_run(cfg, job_type="report")
    try:
        board = leaderboard_rows(report)
        logged: dict[str, Any] = {
            "report/curves": wandb.Table(columns=CURVE_COLUMNS, data=curve_rows(report)),
            "report/leaderboard": wandb.Table(columns=list(board[0]), data=[list(r.values()) for r in board]),
            "report/aup_curve": wandb.plot.line_series(
                xs=[[p["tpf"] for p in c["points"]] for c in report["curves"]],
                ys=[[p["accuracy"] for p in c["points"]] for c in report["curves"]],
                keys=[f"{c['model']} / {c['decoder']}" for c in report["curves"]],
                title=f"Accuracy under parallelism (y_max = {report['y_max']:.1f})", xname="tokens per forward"),
        }
        figure = Path(output_dir_of(cfg)) / "aup_curve.png"  # write_report's plot, beside the run: the same figure
        if figure.is_file():
            logged["report/aup_curve_figure"] = wandb.Image(str(figure))
        for name, (columns, rows) in (tables or {}).items():
            logged[f"report/{name}"] = wandb.Table(columns=columns, data=rows)
        run.log(logged)
        run.summary.update({"report/y_max": report["y_max"],
                            **{f"aup/{c['model']}/{c['decoder']}": c["aup"] for c in report["curves"]}})
        return run.id
    finally:
        run.finish()  # one run per report: nothing logged afterwards may land in it
