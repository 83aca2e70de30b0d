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

from vtp_kedro.vtp import scaling_stats
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.scaling_stats import Interval
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


# --- seeds: every point runs once per seed --------------------------------------------------------
SEED_STRIDE = 10_000


def derived_seed_overrides(config: Mapping[str, Any], run_seed: int) -> dict[str, Any]:
    """Overrides that move every ``seed`` key of a stage's parameters (at any depth, e.g. the
    trainer's, the data stream's, the model's sampler's, the DiT sampling's) to
    ``configured + SEED_STRIDE * run_seed``: run seed 0 is the configured run itself, and run seeds
    stay apart from the per-rank offsets the stages add (below SEED_STRIDE ranks)."""
    if run_seed < 0:
        raise ValueError(f"a run seed is >= 0; got {run_seed}")
    overrides: dict[str, Any] = {}
    for key, value in config.items():
        if key == "seed" and isinstance(value, int) and not isinstance(value, bool):
            overrides[key] = value + SEED_STRIDE * run_seed
        elif isinstance(value, Mapping):
            nested = derived_seed_overrides(value, run_seed)
            if nested:
                overrides[key] = nested
    return overrides


# --- the results table ------------------------------------------------------------------------------
# One row per run (a point and a seed). FIDs are named for their feature space (Inception: rfid, gfid; the reference
# classifier: rfid_ref, gfid_ref): a study fills the columns of the spaces its evaluation measured.
# gfid and gen_class_acc are the unguided samples' (the paper's protocol); *_cfg the guided ones.
# gfid_noise / gfid_ref_noise: the standard deviation of that one gFID from its samples alone
# (metrics.fidelity.fid_split_half_noise).
RESULT_COLUMNS: tuple[str, ...] = (
    "point", "seed", "objective", "budget_flops", "model_size", "data_size", "semantic_features",
    "flops", "steps", "data_samples",
    "psnr", "rfid", "rfid_ref", "class_acc_ref",
    "linear_probe", "zero_shot", "chance", "pixel_baseline",
    "gfid", "gfid_ref", "gfid_noise", "gfid_ref_noise", "gen_class_acc",
    "gfid_cfg", "gfid_ref_cfg", "gen_class_acc_cfg", "cfg_scale",
    "probe_knn",
    "mlflow_run_id",
)


def result_row(point: GridPoint, metrics: Mapping[str, Any], probe_log: Sequence[Mapping[str, Any]],
               trainer_state: Mapping[str, Any], data_samples: int | None, mlflow_run_id: str | None,
               seed: int) -> dict[str, Any]:
    """A run's row of ``results.csv`` (the point run with ``seed``) from its evaluation's
    ``metrics.json``, the online probe's log and the pre-training run's final trainer state."""
    rec = metrics["reconstruction"]["post_gan"]
    probe = metrics["understanding"]["linear_probe"]
    zero_shot = metrics["understanding"]["zero_shot"]
    unguided, guided = metrics["generation"]["unguided"], metrics["generation"]["guided"]
    knn = [record["probe/knn_top1"] for record in probe_log if "probe/knn_top1" in record]
    row = {
        **point.coordinates(), "point": point.name, "seed": seed,
        "flops": trainer_state["flops"], "steps": trainer_state["step"], "data_samples": data_samples,
        "psnr": rec["psnr"], "rfid": rec.get("rfid"), "rfid_ref": rec.get("rfid_ref"),
        "class_acc_ref": rec.get("class_acc_ref"),
        "linear_probe": probe["top1"], "zero_shot": zero_shot.get("top1"), "chance": probe["chance"],
        "pixel_baseline": probe.get("pixel_baseline_top1"),
        "gfid": unguided.get("gfid"), "gfid_ref": unguided.get("gfid_ref"),
        "gfid_noise": unguided.get("gfid_noise"), "gfid_ref_noise": unguided.get("gfid_ref_noise"),
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


# --- points: the runs of one grid point ------------------------------------------------------------
def point_runs(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The rows (runs) of each point, in the table's order."""
    points: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        points.setdefault(str(row["point"]), []).append(row)
    return points


def point_estimate(runs: Sequence[Mapping[str, Any]], column: str, level: float = 0.95) -> Interval | None:
    """The point's mean of ``column`` over its runs (seeds) with its interval: Student t over the
    runs when there are two or more. With one run, a FID (a column with a ``<column>_noise`` beside
    it) gets the normal interval of its own sampling noise only (the split-half estimate: the
    seed-to-seed spread of training is not in it), anything else a NaN interval. None when no run
    measured it."""
    measured = [(value, run) for value, run in ((_value(run.get(column)), run) for run in runs) if value is not None]
    if not measured:
        return None
    interval = scaling_stats.mean_interval([value for value, _ in measured], level)
    if interval is not None:
        return interval
    value, run = measured[0]
    noise = _value(run.get(f"{column}_noise"))
    if noise is not None:
        return scaling_stats.normal_interval(value, noise, level, method="one run: the FID's split-half noise only")
    return Interval(value, math.nan, math.nan, 1, level, "one run: no interval")


def _flops(row: Mapping[str, Any]) -> float:
    """The FLOPs the run spent (the trainer's count), else its budget."""
    spent = _value(row.get("flops"))
    return spent if spent is not None else float(row["budget_flops"])


def _point_flops(runs: Sequence[Mapping[str, Any]]) -> float:
    return sum(_flops(run) for run in runs) / len(runs)


# --- the plots --------------------------------------------------------------------------------------
_OBJECTIVE_COLOURS = {"ae": "tab:grey", "ae_noise": "tab:brown", "clip_ae": "tab:blue", "ssl_ae": "tab:green",
                      "vtp": "tab:red"}
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


def _line_points(line: Sequence[Mapping[str, Any]], column: str, level: float) -> list[tuple[float, Interval]]:
    """(mean FLOPs, the metric's estimate) of each point of a line, cheapest first."""
    points = []
    for runs in point_runs(line).values():
        estimate = point_estimate(runs, column, level)
        if estimate is not None:
            points.append((_point_flops(runs), estimate))
    return sorted(points, key=lambda point: point[0])


def _error_bars(ax, xs: Sequence[float], estimates: Sequence[Interval], colour: str | None,
                horizontal: bool = False) -> None:
    """The intervals that exist (two or more runs, or a FID's own noise) as bars around the means."""
    chosen = [(x, e) for x, e in zip(xs, estimates) if math.isfinite(e.low) and math.isfinite(e.high)]
    if not chosen:
        return
    x, e = zip(*chosen)
    means = [i.estimate for i in e]
    spread = [[m - i.low for m, i in zip(means, e)], [i.high - m for m, i in zip(means, e)]]
    if horizontal:
        ax.errorbar(means, x, xerr=spread, fmt="none", ecolor=colour, alpha=0.6)
    else:
        ax.errorbar(x, means, yerr=spread, fmt="none", ecolor=colour, alpha=0.6)


def plot_against_flops(rows: Sequence[Mapping[str, Any]], panels: Sequence[tuple[Sequence[str], str]],
                       title: str, level: float = 0.95) -> Figure:
    """One panel per metric (the first of its column names that the study measured) against the
    tokenizer's FLOPs (log scale), one line per objective preset through each point's mean over
    its runs, with the point's interval as a bar where it has one."""
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
        ax.set_title(f"{column} ({better} is better; bars: {level:.0%} intervals)")
        for key, line in _lines(rows).items():
            points = _line_points(line, column, level)
            if points:
                colour = _OBJECTIVE_COLOURS.get(key[0])
                xs, estimates = zip(*points)
                ax.plot(xs, [e.estimate for e in estimates], marker="o", label=_label(key), color=colour)
                _error_bars(ax, xs, estimates, colour)
        chance = _present(rows, "chance") if column in ("linear_probe", "probe_knn", "gen_class_acc") else None
        if chance:
            ax.axhline(float(rows[0]["chance"]), color="black", linestyle=":", label="chance")
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def plot_reconstruction(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> Figure:
    return plot_against_flops(rows, [(("psnr",), "higher"), (("rfid", "rfid_ref"), "lower")],
                              "Reconstruction against tokenizer compute (post-GAN decoder)", level)


def plot_generation(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> Figure:
    return plot_against_flops(rows, [(("gfid", "gfid_ref"), "lower"), (("gen_class_acc",), "higher")],
                              "Generation against tokenizer compute (the same DiT recipe for every tokenizer, no CFG)",
                              level)


def plot_understanding(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> Figure:
    return plot_against_flops(rows, [(("linear_probe",), "higher"), (("probe_knn",), "higher")],
                              "Understanding against tokenizer compute (linear probe; online k-NN probe)", level)


def plot_generation_vs_understanding(rows: Sequence[Mapping[str, Any]], config: VerdictConfig | None = None) -> Figure:
    """The paper's Figure 2: generation against the linear probe across every point (means over the
    point's runs, bars where it has an interval), titled with the rank correlation and its interval."""
    config = config or VerdictConfig()
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.subplots()
    column = _present(rows, "gfid", "gfid_ref")
    ax.set_xlabel("linear probe top-1")
    ax.grid(True, alpha=0.3)
    if column is None:
        ax.set_title("generation not measured")
        return figure
    smallest = min(float(r["budget_flops"]) for r in rows)
    for objective in dict.fromkeys(row["objective"] for row in rows):
        chosen = [(point_estimate(runs, "linear_probe", config.level), point_estimate(runs, column, config.level),
                   float(runs[0]["budget_flops"]))
                  for runs in point_runs([row for row in rows if row["objective"] == objective]).values()]
        chosen = [(x, y, b) for x, y, b in chosen if x is not None and y is not None]
        if not chosen:
            continue
        colour = _OBJECTIVE_COLOURS.get(objective)
        sizes = [20 + 15 * math.log2(b / smallest + 1) for _, _, b in chosen]
        ax.scatter([x.estimate for x, _, _ in chosen], [y.estimate for _, y, _ in chosen],
                   s=sizes, label=objective, color=colour, alpha=0.8)
        _error_bars(ax, [x.estimate for x, _, _ in chosen], [y for _, y, _ in chosen], colour)
        _error_bars(ax, [y.estimate for _, y, _ in chosen], [x for x, _, _ in chosen], colour, horizontal=True)
    chance = _value(rows[0].get("chance"))
    if chance is not None:
        ax.axvline(chance, color="black", linestyle=":", label="chance")
    ax.set_ylabel(f"{column} (lower is better)")
    rho = _generation_understanding_correlation(rows, column, config)
    correlation = ("too few points for a rank correlation" if rho is None else
                   f"Spearman ρ {rho.estimate:+.2f} [{rho.low:+.2f}, {rho.high:+.2f}] over {rho.n} points")
    ax.set_title(f"Understanding against generation (marker size: FLOPs)\n{correlation}", fontsize=9)
    ax.legend(fontsize=8)
    return figure


# --- the trends -------------------------------------------------------------------------------------
def scaling_trends(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """For every line (objective and other varying axes): each metric's point mean (over the point's
    runs) at the smallest and the largest budget and its change."""
    metrics = [name for name in ("psnr", _present(rows, "rfid", "rfid_ref"), "linear_probe", "probe_knn",
                                 _present(rows, "gfid", "gfid_ref"), "gen_class_acc") if name]
    trends = []
    for key, line in _lines(rows).items():
        points = sorted(point_runs(line).values(), key=lambda runs: float(runs[0]["budget_flops"]))
        first, last = points[0], points[-1]
        entry: dict[str, Any] = {"line": _label(key), "from_flops": float(first[0]["budget_flops"]),
                                 "to_flops": float(last[0]["budget_flops"]), "points": len(points)}
        for name in metrics:
            start, end = point_estimate(first, name, level), point_estimate(last, name, level)
            start, end = (None if e is None else e.estimate for e in (start, end))
            entry[name] = (start, end, None if start is None or end is None else end - start)
        trends.append(entry)
    return trends


# --- the verdict ------------------------------------------------------------------------------------
RECONSTRUCTION_ONLY = ("ae", "ae_noise")  # the presets without a semantic objective


class VerdictConfig(Config):
    """How the paper's claims are judged (``scaling_stats``' rule)."""

    level: float = Field(0.95, gt=0, lt=1, description="the intervals' confidence level")
    gfid_margin: float = Field(0.0, ge=0, description="the smallest fall of gFID per decade of FLOPs that counts as "
                                                      "improving (0: any fall); claims (a) and (b)")
    bootstrap_resamples: int = Field(2000, ge=100, description="resamples of the rank correlation's interval")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")


CLAIMS = {
    "a": "reconstruction-only tokenizers improve reconstruction with compute while their generation stalls or worsens",
    "b": "vtp's generation keeps improving with compute",
    "c": "at equal FLOPs vtp beats the reconstruction-only tokenizers on generation and understanding",
    "d": "generation correlates with understanding across points (Figure 2: gFID falls as the linear probe rises)",
}


def _test(statistic: str, interval: Interval | None, direction: scaling_stats.Direction,
          threshold: float = 0.0) -> dict[str, Any]:
    return {"statistic": statistic, "expected": f"{direction} {threshold + 0.0:g}",  # + 0.0: no '-0' 
            "verdict": scaling_stats.judge(interval, direction, threshold),
            "interval": None if interval is None else interval.as_dict()}


def _claim(claim: str, line: str | None, tests: list[dict[str, Any]], note: str | None = None) -> dict[str, Any]:
    entry = {"claim": claim, "statement": CLAIMS[claim], "line": line,
             "verdict": scaling_stats.combine([test["verdict"] for test in tests]), "tests": tests}
    if note:
        entry["note"] = note
    return entry


def _slope(line: Sequence[Mapping[str, Any]], column: str, level: float) -> Interval | None:
    """The slope of ``column`` per decade of FLOPs over every run of the line."""
    pairs = [(math.log10(_flops(row)), _value(row.get(column))) for row in line]
    pairs = [(x, y) for x, y in pairs if y is not None]
    return scaling_stats.slope_interval([x for x, _ in pairs], [y for _, y in pairs], level) if pairs else None


def _paired_difference(rows: Sequence[Mapping[str, Any]], objective: str, baseline: str, column: str,
                       level: float) -> Interval | None:
    """The mean of ``column``(objective) - ``column``(baseline) over runs matched by budget, the other
    axes and the seed (one pair per budget and seed), with its t interval over the pairs."""
    def key(row: Mapping[str, Any]) -> tuple:
        return (float(row["budget_flops"]), *(str(row.get(axis)) for axis in _OTHER_AXES), str(row.get("seed")))

    values: dict[str, dict[tuple, list[float]]] = {objective: {}, baseline: {}}
    for row in rows:
        value = _value(row.get(column))
        if row["objective"] in values and value is not None:
            values[row["objective"]].setdefault(key(row), []).append(value)
    common = sorted(set(values[objective]) & set(values[baseline]))
    def mean(found: list[float]) -> float:
        return sum(found) / len(found)

    differences = [mean(values[objective][k]) - mean(values[baseline][k]) for k in common]
    return scaling_stats.mean_interval(differences, level)


def _generation_understanding_correlation(rows: Sequence[Mapping[str, Any]], column: str,
                                          config: VerdictConfig) -> Interval | None:
    pairs = [(point_estimate(runs, "linear_probe", config.level), point_estimate(runs, column, config.level))
             for runs in point_runs(rows).values()]
    pairs = [(x.estimate, y.estimate) for x, y in pairs if x is not None and y is not None]
    return scaling_stats.rank_correlation_interval([x for x, _ in pairs], [y for _, y in pairs], config.level,
                                                   config.bootstrap_resamples, config.seed)


def verdict(rows: Sequence[Mapping[str, Any]], config: VerdictConfig | None = None) -> dict[str, Any]:
    """Each of the paper's claims (``CLAIMS``) judged on the results table, one entry per line it
    concerns, each with its tests (statistic, expected sign, interval, verdict) and the combined
    verdict (``scaling_stats``' rule). The statistics:

    (a) per reconstruction-only line (``ae``, ``ae_noise``): the OLS slope over log10 FLOPs (every run)
        of rFID (< 0; PSNR, > 0, when no rFID was measured) and of gFID (> -gfid_margin: not improving);
    (b) per vtp line: the slope of gFID (< -gfid_margin: improving);
    (c) per reconstruction-only baseline: vtp minus baseline, matched by budget, other axes and seed,
        for gFID (< 0) and the linear probe (> 0), mean and t interval over the pairs;
    (d) Spearman's ρ between the points' mean linear probe and mean gFID (< 0), bootstrap interval
        over points.

    A claim that lacks its rows (no vtp in the grid, too few points) is 'undecided', with a note.
    """
    config = config or VerdictConfig()
    level, margin = config.level, config.gfid_margin
    gfid = _present(rows, "gfid", "gfid_ref")
    rfid = _present(rows, "rfid", "rfid_ref")
    lines = _lines(rows)
    claims: list[dict[str, Any]] = []
    if gfid is None:
        note = "generation was not measured"
        return {"level": level, "rule": _RULE, "claims": [_claim(c, None, [], note) for c in CLAIMS]}

    reconstruction = [(key, line) for key, line in lines.items() if key[0] in RECONSTRUCTION_ONLY]
    for key, line in reconstruction:
        rec_test = (_test(f"slope of {rfid} per decade of FLOPs", _slope(line, rfid, level), "<") if rfid else
                    _test("slope of psnr per decade of FLOPs", _slope(line, "psnr", level), ">"))
        claims.append(_claim("a", _label(key), [rec_test, _test(f"slope of {gfid} per decade of FLOPs",
                                                                 _slope(line, gfid, level), ">", -margin)]))
    if not reconstruction:
        claims.append(_claim("a", None, [], "no reconstruction-only preset in the grid"))

    semantic = [(key, line) for key, line in lines.items() if key[0] == "vtp"]
    for key, line in semantic:
        claims.append(_claim("b", _label(key), [_test(f"slope of {gfid} per decade of FLOPs",
                                                      _slope(line, gfid, level), "<", -margin)]))
    if not semantic:
        claims.append(_claim("b", None, [], "no vtp point in the grid"))

    objectives = {row["objective"] for row in rows}
    baselines = [b for b in RECONSTRUCTION_ONLY if b in objectives]
    for baseline in baselines if "vtp" in objectives else []:
        claims.append(_claim("c", f"vtp - {baseline}", [
            _test(f"{gfid}: vtp - {baseline}, paired by budget and seed",
                  _paired_difference(rows, "vtp", baseline, gfid, level), "<"),
            _test(f"linear_probe: vtp - {baseline}, paired by budget and seed",
                  _paired_difference(rows, "vtp", baseline, "linear_probe", level), ">")]))
    if "vtp" not in objectives or not baselines:
        claims.append(_claim("c", None, [], "the grid lacks vtp or a reconstruction-only preset"))

    rho = _generation_understanding_correlation(rows, gfid, config)
    claims.append(_claim("d", "all points", [_test(f"Spearman ρ(linear_probe, {gfid}) over points", rho, "<")],
                         None if rho is not None else "fewer than 4 points with both numbers (or a constant one)"))
    return {"level": level, "gfid_margin": margin, "rule": _RULE, "claims": claims}


_RULE = ("a claim 'θ > c' is supported when its interval's low end is above c, contradicted when its high end "
         "is below c, else undecided ('θ < c' mirrored); a claim of several tests is supported when all are, "
         "contradicted when any is, else undecided; no interval (too few runs or points): undecided")


def _interval_text(interval: Mapping[str, Any] | None) -> str:
    if interval is None:
        return "–"
    return f"{interval['estimate']:+.3g} [{interval['low']:+.3g}, {interval['high']:+.3g}] (n={interval['n']})"


def verdict_markdown(judged: Mapping[str, Any]) -> list[str]:
    lines = ["## Verdict on the paper's claims", "",
             f"Intervals at {judged['level']:.0%}. Rule: {judged['rule']}.", "",
             "| claim | line | verdict | statistic | expected | estimate [interval] | test |",
             "|---|---|---|---|---|---|---|"]
    for claim in judged["claims"]:
        tests = claim["tests"] or [{"statistic": claim.get("note", "–"), "expected": "–", "interval": None,
                                    "verdict": "undecided"}]
        for index, test in enumerate(tests):
            head = (f"({claim['claim']}) {claim['statement']}", claim["line"] or "–", f"**{claim['verdict']}**") \
                if index == 0 else ("", "", "")
            lines.append("| " + " | ".join([*head, test["statistic"], test["expected"], _interval_text(test["interval"]),
                                             test["verdict"]]) + " |")
    return [*lines, ""]


def summary_markdown(rows: Sequence[Mapping[str, Any]], config: VerdictConfig | None = None) -> str:
    """The study's summary: each line's metrics from its smallest to its largest budget, the floors,
    and the verdict on the paper's claims."""
    config = config or VerdictConfig()
    trends = scaling_trends(rows, config.level)
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
    lines += points_markdown(rows, config.level)
    lines += verdict_markdown(verdict(rows, config))
    return "\n".join(lines)


def points_markdown(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> list[str]:
    """Each point's mean over its runs (seeds) and its interval (``point_estimate``)."""
    metrics = [name for name in ("psnr", _present(rows, "rfid", "rfid_ref"), "linear_probe",
                                 _present(rows, "gfid", "gfid_ref")) if name]
    seeds = sorted({str(row.get("seed")) for row in rows})
    lines = [f"## Points: mean over seeds [{level:.0%} interval]", "",
             f"Seeds {', '.join(seeds)}. With two or more runs the interval is Student t over the seeds (training, "
             "GAN, DiT and sampling all vary with the seed); with one run only the gFID has one, its own sampling "
             "noise from split halves of its samples, which leaves out the seed-to-seed spread of training.", "",
             "| point | runs | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for name, runs in point_runs(rows).items():
        cells = []
        for metric in metrics:
            estimate = point_estimate(runs, metric, level)
            if estimate is None:
                cells.append("–")
            elif math.isfinite(estimate.low):
                cells.append(f"{estimate.estimate:.4g} [{estimate.low:.4g}, {estimate.high:.4g}]"
                             + ("¹" if estimate.n == 1 else ""))
            else:
                cells.append(f"{estimate.estimate:.4g}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return [*lines, "", "¹ one run: the FID's split-half sampling noise only.", ""]
