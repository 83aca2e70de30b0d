"""The statistics behind the scaling study's verdict: intervals of a mean, of a trend's slope and of a
rank correlation, and the rule that turns an interval into a verdict. Plain numbers in, plain
numbers out (no table, no plotting); ``vtp.scaling`` applies them to the results table.

The verdict rule (``judge``): a claim is a statement about a statistic θ, either "θ > c" or
"θ < c" (c a threshold, 0 unless a margin is set). With [low, high] the θ's two-sided interval at
the chosen level (95% by default):

- **supported** when the interval excludes the opposite: low > c for "θ > c", high < c for "θ < c";
- **contradicted** when the interval shows the opposite: high < c for "θ > c", low > c for "θ < c";
- **undecided** otherwise (the interval contains c), and whenever there are too few numbers for an
  interval (it is None).

A claim made of several parts (e.g. "reconstruction improves and generation does not") is
supported when every part is, contradicted when any part is, else undecided (``combine``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["supported", "contradicted", "undecided"]
Direction = Literal[">", "<"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval at ``level``, from ``n`` numbers, and how it was made."""

    estimate: float
    low: float
    high: float
    n: int
    level: float
    method: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _t(level: float, df: int) -> float:
    return float(stats.t.ppf(0.5 + level / 2, df))


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=float)
    return array[np.isfinite(array)]


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval | None:
    """The mean and its Student-t interval, mean ± t_{n-1} s / sqrt(n); None with fewer than 2 values."""
    x = _finite(values)
    if len(x) < 2:
        return None
    mean, half = float(x.mean()), _t(level, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x), level, "t")


def normal_interval(estimate: float, standard_error: float, level: float = 0.95, n: int = 1,
                    method: str = "normal") -> Interval:
    """estimate ± z standard_error (e.g. one FID with its own sampling noise)."""
    half = float(stats.norm.ppf(0.5 + level / 2)) * standard_error
    return Interval(float(estimate), float(estimate) - half, float(estimate) + half, n, level, method)


def slope_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Interval | None:
    """The least-squares slope of y on x and its t interval (n - 2 degrees of freedom); None with
    fewer than 3 pairs or fewer than 2 distinct x."""
    pairs = np.asarray([(float(a), float(b)) for a, b in zip(x, y)], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    if len(pairs) < 3 or len(np.unique(pairs[:, 0])) < 2:
        return None
    xs, ys = pairs[:, 0], pairs[:, 1]
    sxx = float(((xs - xs.mean()) ** 2).sum())
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum()) / sxx
    residuals = ys - ys.mean() - slope * (xs - xs.mean())
    se = math.sqrt(float((residuals**2).sum()) / (len(xs) - 2) / sxx)
    half = _t(level, len(xs) - 2) * se
    return Interval(slope, slope - half, slope + half, len(xs), level, "OLS slope, t")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_correlation_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95,
                              resamples: int = 2000, seed: int = 0) -> Interval | None:
    """Spearman's ρ of the pairs and its percentile bootstrap interval (pairs resampled with
    replacement, ``seed`` fixes the draws; resamples with a constant side are dropped); None with
    fewer than 4 pairs or a constant side."""
    pairs = np.asarray([(float(a), float(b)) for a, b in zip(x, y)], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    if len(pairs) < 4:
        return None
    rho = spearman(pairs[:, 0], pairs[:, 1])
    if math.isnan(rho):
        return None
    generator = np.random.default_rng(seed)
    draws = generator.integers(0, len(pairs), size=(resamples, len(pairs)))
    boot = np.asarray([spearman(pairs[d, 0], pairs[d, 1]) for d in draws])
    boot = boot[np.isfinite(boot)]
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(rho, float(low), float(high), len(pairs), level, f"Spearman, bootstrap over pairs ({resamples})")


def judge(interval: Interval | None, direction: Direction, threshold: float = 0.0) -> Verdict:
    """The module's rule for the claim "θ ``direction`` ``threshold``"."""
    if interval is None:
        return "undecided"
    if direction == ">":
        return "supported" if interval.low > threshold else "contradicted" if interval.high < threshold else "undecided"
    if direction == "<":
        return "supported" if interval.high < threshold else "contradicted" if interval.low > threshold else "undecided"
    raise ValueError(f"direction must be '>' or '<'; got {direction!r}")


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """Every part supported: supported; any part contradicted: contradicted; else (or no part) undecided."""
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "contradicted" if "contradicted" in verdicts else "undecided"
