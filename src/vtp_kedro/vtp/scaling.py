"""The scaling study (the paper's Figures 2 and 4-7): a grid of tokenizer pre-training runs, one
table of their downstream numbers, and the plots that show whether generation scales.

A grid point is one pre-training configuration: an objective preset (``ae``, ``ae_noise``,
``clip_ae``, ``ssl_ae``, ``vtp``) and a compute budget in FLOPs, optionally a tokenizer size, a data size
and where the semantic heads read (``bottleneck`` or ``trunk``). Every point is judged by the
same downstream protocol (GAN decoder, latents, DiT, evaluation), so the only thing that
differs between two rows of ``results.csv`` is the tokenizer's pre-training.

The paper's claim, in these terms: along the FLOPs axis, ``ae``'s reconstruction (PSNR up,
rFID down) keeps improving while its generation (gFID) stalls or worsens; with semantic
objectives (``clip_ae``, ``ssl_ae``, ``vtp``) generation improves with compute, and across all
points generation tracks understanding (gFID falls as the linear probe rises, Figure 2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from matplotlib.figure import Figure
from pydantic import Field, field_validator

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.stages.tokenizer_pretraining import Objective

SemanticFeatures = Literal["bottleneck", "trunk"]
DEFAULT_MODEL_SIZE = "default"  # the tokenizer of tokenizer_pretraining's own parameters


class ScalingGridConfig(Config):
    """The axes of the grid; every combination is a point."""

    objective: tuple[Objective, ...] = Field(min_length=1)
    budget_flops: tuple[float, ...] = Field(min_length=1, description="tokenizer pre-training budgets in FLOPs")
    model_size: tuple[str, ...] = Field((DEFAULT_MODEL_SIZE,), min_length=1,
                                        description="names of scaling_study.model_sizes entries")
    data_size: tuple[int | None, ...] = Field((None,), min_length=1,
                                              description="pre-training samples; None: all of them")
    semantic_features: tuple[SemanticFeatures, ...] = Field(("bottleneck",), min_length=1)

    @field_validator("budget_flops")
    @classmethod
    def _positive(cls, budgets: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (b > 0 and math.isfinite(b)) for b in budgets):
            raise ValueError(f"every budget must be a positive number of FLOPs; got {list(budgets)}")
        return budgets

    @field_validator("data_size")
    @classmethod
    def _data_sizes(cls, sizes: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if any(size is not None and size <= 0 for size in sizes):
            raise ValueError(f"a data size is a positive number of samples or null (all); got {list(sizes)}")
        return sizes


def _flops_label(flops: float) -> str:
    return f"{flops:.3g}".replace("e+", "e")


@dataclass(frozen=True)
class GridPoint:
    """One tokenizer pre-training configuration of the grid."""

    objective: str
    budget_flops: float
    model_size: str = DEFAULT_MODEL_SIZE
    data_size: int | None = None
    semantic_features: str = "bottleneck"

    @property
    def name(self) -> str:
        """The point's folder and MLflow run name, e.g. ``vtp_1.72e13flops_default_all_bottleneck``."""
        data = "all" if self.data_size is None else str(self.data_size)
        return f"{self.objective}_{_flops_label(self.budget_flops)}flops_{self.model_size}_{data}_{self.semantic_features}"

    def coordinates(self) -> dict[str, Any]:
        return asdict(self)


def expand_grid(grid: ScalingGridConfig) -> list[GridPoint]:
    """Every combination, cheapest budgets first (an interrupted study has covered every preset
    equally far); names must be unique (budgets that print alike are refused)."""
    points = [GridPoint(objective, budget, model, data, features) for budget, model, data, features, objective
              in itertools.product(sorted(grid.budget_flops), grid.model_size, grid.data_size,
                                   grid.semantic_features, grid.objective)]
    names = [point.name for point in points]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"scaling_study.grid names these points twice (budgets equal to 3 digits?): {repeated}")
    return points


# --- the results table ------------------------------------------------------------------------------
# One row per point. FIDs are named for their feature space (Inception: rfid, gfid; the reference
# classifier: rfid_ref, gfid_ref): a study fills the columns of the spaces its evaluation measured.
# gfid and gen_class_acc are the unguided samples' (the paper's protocol); *_cfg the guided ones.
RESULT_COLUMNS: tuple[str, ...] = (
    "point", "objective", "budget_flops", "model_size", "data_size", "semantic_features",
    "flops", "steps", "data_samples",
    "psnr", "rfid", "rfid_ref", "class_acc_ref",
    "linear_probe", "zero_shot", "chance", "pixel_baseline",
    "gfid", "gfid_ref", "gen_class_acc", "gfid_cfg", "gfid_ref_cfg", "gen_class_acc_cfg", "cfg_scale",
    "probe_knn",
    "mlflow_run_id",
)


def result_row(point: GridPoint, metrics: Mapping[str, Any], probe_log: Sequence[Mapping[str, Any]],
               trainer_state: Mapping[str, Any], data_samples: int | None, mlflow_run_id: str | None) -> dict[str, Any]:
    """A point's row of ``results.csv`` from its evaluation's ``metrics.json``, the online probe's log
    and the pre-training run's final trainer state."""
    rec = metrics["reconstruction"]["post_gan"]
    probe = metrics["understanding"]["linear_probe"]
    zero_shot = metrics["understanding"]["zero_shot"]
    unguided, guided = metrics["generation"]["unguided"], metrics["generation"]["guided"]
    knn = [record["probe/knn_top1"] for record in probe_log if "probe/knn_top1" in record]
    row = {
        **point.coordinates(), "point": point.name,
        "flops": trainer_state["flops"], "steps": trainer_state["step"], "data_samples": data_samples,
        "psnr": rec["psnr"], "rfid": rec.get("rfid"), "rfid_ref": rec.get("rfid_ref"),
        "class_acc_ref": rec.get("class_acc_ref"),
        "linear_probe": probe["top1"], "zero_shot": zero_shot.get("top1"), "chance": probe["chance"],
        "pixel_baseline": probe.get("pixel_baseline_top1"),
        "gfid": unguided.get("gfid"), "gfid_ref": unguided.get("gfid_ref"),
        "gen_class_acc": unguided["gen_class_acc"],
        "gfid_cfg": guided.get("gfid"), "gfid_ref_cfg": guided.get("gfid_ref"),
        "gen_class_acc_cfg": guided["gen_class_acc"], "cfg_scale": guided["cfg_scale"],
        "probe_knn": knn[-1] if knn else None, "mlflow_run_id": mlflow_run_id,
    }
    return {column: row[column] for column in RESULT_COLUMNS}


def _present(rows: Sequence[Mapping[str, Any]], *names: str) -> str | None:
    """The first column with a value in some row (e.g. gfid when Inception was measured, else gfid_ref)."""
    return next((name for name in names if any(_value(row.get(name)) is not None for row in rows)), None)


def _value(value: Any) -> float | None:
    """A number, or None for a missing one (an empty CSV cell, NaN from pandas)."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


# --- the plots --------------------------------------------------------------------------------------
_OBJECTIVE_COLOURS = {"ae": "tab:grey", "ae_noise": "tab:brown", "clip_ae": "tab:blue", "ssl_ae": "tab:green", "vtp": "tab:red"}
_OTHER_AXES = ("model_size", "data_size", "semantic_features")


def _lines(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped into lines: one per objective and value of every other axis that varies."""
    varying = [axis for axis in _OTHER_AXES if len({str(row[axis]) for row in rows}) > 1]
    lines: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (row["objective"], *[(axis, row[axis]) for axis in varying])
        lines.setdefault(key, []).append(row)
    return lines


def _label(key: tuple) -> str:
    return ", ".join([key[0], *[f"{axis} {value}" for axis, value in key[1:]]])


def plot_against_flops(rows: Sequence[Mapping[str, Any]], panels: Sequence[tuple[Sequence[str], str]],
                       title: str) -> Figure:
    """One panel per metric (the first of its column names that the study measured) against the
    tokenizer's FLOPs (log scale), one line per objective preset."""
    figure = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (names, better) in zip(axes, panels):
        column = _present(rows, *names)
        ax.set_xscale("log")
        ax.set_xlabel("tokenizer pre-training FLOPs")
        ax.grid(True, which="both", alpha=0.3)
        if column is None:
            ax.set_title(f"{' / '.join(names)}: not measured")
            continue
        ax.set_ylabel(column)
        ax.set_title(f"{column} ({better} is better)")
        for key, line in _lines(rows).items():
            points = sorted((float(row["flops"] or row["budget_flops"]), _value(row[column])) for row in line
                            if _value(row[column]) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=_label(key), color=_OBJECTIVE_COLOURS.get(key[0]))
        chance = _present(rows, "chance") if column in ("linear_probe", "probe_knn", "gen_class_acc") else None
        if chance:
            ax.axhline(float(rows[0]["chance"]), color="black", linestyle=":", label="chance")
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def plot_reconstruction(rows: Sequence[Mapping[str, Any]]) -> Figure:
    return plot_against_flops(rows, [(("psnr",), "higher"), (("rfid", "rfid_ref"), "lower")],
                              "Reconstruction against tokenizer compute (post-GAN decoder)")


def plot_generation(rows: Sequence[Mapping[str, Any]]) -> Figure:
    return plot_against_flops(rows, [(("gfid", "gfid_ref"), "lower"), (("gen_class_acc",), "higher")],
                              "Generation against tokenizer compute (the same DiT recipe for every tokenizer, no CFG)")


def plot_understanding(rows: Sequence[Mapping[str, Any]]) -> Figure:
    return plot_against_flops(rows, [(("linear_probe",), "higher"), (("probe_knn",), "higher")],
                              "Understanding against tokenizer compute (linear probe; online k-NN probe)")


def plot_generation_vs_understanding(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The paper's Figure 2: generation against the linear probe across every point."""
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.subplots()
    column = _present(rows, "gfid", "gfid_ref")
    ax.set_xlabel("linear probe top-1")
    ax.grid(True, alpha=0.3)
    if column is None:
        ax.set_title("generation not measured")
        return figure
    for objective in dict.fromkeys(row["objective"] for row in rows):
        chosen = [row for row in rows if row["objective"] == objective and _value(row[column]) is not None]
        sizes = [20 + 15 * math.log2(float(row["budget_flops"]) / min(float(r["budget_flops"]) for r in rows) + 1)
                 for row in chosen]
        ax.scatter([float(row["linear_probe"]) for row in chosen], [_value(row[column]) for row in chosen],
                   s=sizes, label=objective, color=_OBJECTIVE_COLOURS.get(objective), alpha=0.8)
    chance = _value(rows[0].get("chance"))
    if chance is not None:
        ax.axvline(chance, color="black", linestyle=":", label="chance")
    ax.set_ylabel(f"{column} (lower is better)")
    ax.set_title("Understanding against generation (marker size: FLOPs)")
    ax.legend(fontsize=8)
    return figure


# --- the verdict ------------------------------------------------------------------------------------
def scaling_trends(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For every line (objective and other varying axes): each metric at the smallest and the largest
    budget and its change, the numbers behind "does generation improve with compute"."""
    metrics = [name for name in ("psnr", _present(rows, "rfid", "rfid_ref"), "linear_probe", "probe_knn",
                                 _present(rows, "gfid", "gfid_ref"), "gen_class_acc") if name]
    trends = []
    for key, line in _lines(rows).items():
        line = sorted(line, key=lambda row: float(row["budget_flops"]))
        first, last = line[0], line[-1]
        entry: dict[str, Any] = {"line": _label(key), "from_flops": float(first["budget_flops"]),
                                 "to_flops": float(last["budget_flops"]), "points": len(line)}
        for name in metrics:
            start, end = _value(first.get(name)), _value(last.get(name))
            entry[name] = (start, end, None if start is None or end is None else end - start)
        trends.append(entry)
    return trends


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The study's summary: each line's metrics from its smallest to its largest budget, with the floors."""
    trends = scaling_trends(rows)
    if not trends:
        return "# Scaling study\n\nNo finished points.\n"
    names = [name for name in trends[0] if name not in ("line", "from_flops", "to_flops", "points")]
    header = "| line | FLOPs | " + " | ".join(names) + " |"
    lines = ["# Scaling study", "",
             "Each metric at the smallest and the largest budget of its line (change in brackets). "
             "gFID and gen_class_acc: unguided samples, the same DiT recipe for every tokenizer.", "",
             header, "|" + "---|" * (len(names) + 2)]
    for trend in trends:
        cells = []
        for name in names:
            start, end, change = trend[name]
            cells.append("–" if change is None else f"{start:.4g} → {end:.4g} ({change:+.3g})")
        lines.append(f"| {trend['line']} | {_flops_label(trend['from_flops'])} → {_flops_label(trend['to_flops'])} | "
                     + " | ".join(cells) + " |")
    chance = _value(rows[0].get("chance"))
    baseline = _value(rows[0].get("pixel_baseline"))
    lines += ["", f"Floors: chance {chance:.3f}" + (f", raw-pixel probe {baseline:.3f}" if baseline is not None else "")
              + "; gen_class_acc's ceiling is each row's class_acc_ref (the reconstructions' own class accuracy).", ""]
    return "\n".join(lines)
