"""Training curves: the trainer's metrics log (``metrics.jsonl``) read back and plotted."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vtp_kedro.vtp.engine.trainer import METRICS_LOG

# Panels of the figure: losses, then the SSL health signals that show a collapse (the teacher's
# per-row entropy pinned at log K: uniform targets; the entropy of its batch mean falling to 0: one
# prototype for everything; KoLeo blowing up), then optimisation; the online probe when it runs.
PANELS = (
    ("losses", ("loss", "rec", "l1", "lpips", "clip", "ssl", "dino", "ibot")),
    ("SSL health", ("teacher_cls_entropy", "teacher_patch_entropy", "teacher_cls_mean_entropy",
                    "teacher_patch_mean_entropy", "koleo")),
    ("optimisation", ("lr", "grad_norm", "logit_scale")),
)


def read_metrics_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (one per logging step), oldest first."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log {path}: has the training run in {run_dir} logged any step?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _draw_panel(ax: Any, records: list[dict[str, Any]], names: tuple[str, ...], title: str) -> None:
    steps = [record["step"] for record in records]
    plotted = [name for name in names if any(name in record for record in records)]
    values = {name: [record.get(name, math.nan) for record in records] for name in plotted}
    for name, series in values.items():
        ax.plot(steps, series, label=name)
    finite = [v for series in values.values() for v in series if not math.isnan(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    if plotted:
        ax.legend(fontsize="small")


def plot_curves(records: list[dict[str, Any]], title: str,
                panels: tuple[tuple[str, tuple[str, ...]], ...] = PANELS) -> Figure:
    """One panel per ``(title, metric names)`` group, each present metric against the step
    (log-scale y where every value is positive)."""
    figure = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    figure.suptitle(title)
    for ax, (panel, names) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        _draw_panel(ax, records, names, panel)
    return figure


def plot_stage_curves(stages: dict[str, tuple[list[dict[str, Any]], tuple[str, ...]]], title: str) -> Figure:
    """Every stage's losses in one figure: ``{stage title: (records, metric names)}``, one panel each."""
    figure = Figure(figsize=(5 * len(stages), 4), layout="constrained")
    figure.suptitle(title)
    for ax, (stage, (records, names)) in zip(figure.subplots(1, len(stages), squeeze=False)[0], stages.items()):
        _draw_panel(ax, records, names, stage)
    return figure
