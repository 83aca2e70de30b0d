"""The scaling study's statistics (vtp.scaling_stats) and the verdict on the paper's claims (vtp.scaling.verdict),
on synthetic results tables whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from vtp_kedro.vtp import scaling, scaling_stats
from vtp_kedro.vtp.scaling_stats import Interval

BUDGETS = (1e13, 2e13, 4e13, 8e13)


def test_a_mean_interval_is_students_t():
    values = [1.0, 2.0, 4.0, 7.0]
    interval = scaling_stats.mean_interval(values, 0.95)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (interval.estimate, interval.n) == (3.5, 4)
    assert (interval.low, interval.high) == pytest.approx((low, high))
    assert scaling_stats.mean_interval([1.0]) is None and scaling_stats.mean_interval([1.0, math.nan]) is None


def test_a_slope_interval_matches_linregress_and_is_exact_on_a_line():
    x, y = [0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 2.9, 5.2, 7.1, 8.8]
    interval = scaling_stats.slope_interval(x, y)
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, 3) * fit.stderr
    assert interval.estimate == pytest.approx(fit.slope)
    assert (interval.low, interval.high) == pytest.approx((fit.slope - half, fit.slope + half))
    exact = scaling_stats.slope_interval([1, 2, 3], [5, 3, 1])
    assert (exact.estimate, exact.low, exact.high) == pytest.approx((-2, -2, -2))
    assert scaling_stats.slope_interval([1, 2], [1, 2]) is None  # no degree of freedom left
    assert scaling_stats.slope_interval([1, 1, 1], [1, 2, 3]) is None  # one x: no slope


def test_the_rank_correlation_is_spearmans_with_a_seeded_bootstrap_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = -x + 0.3 * rng.normal(size=30)
    interval = scaling_stats.rank_correlation_interval(x, y, resamples=500, seed=3)
    assert interval.estimate == pytest.approx(stats.spearmanr(x, y).statistic)
    assert interval.low <= interval.estimate <= interval.high < 0
    assert interval == scaling_stats.rank_correlation_interval(x, y, resamples=500, seed=3)
    assert scaling_stats.spearman([1, 2, 2, 3], [1, 1, 2, 2]) == pytest.approx(
        stats.spearmanr([1, 2, 2, 3], [1, 1, 2, 2]).statistic)  # ties: average ranks
    assert scaling_stats.rank_correlation_interval([1, 2, 3], [3, 2, 1]) is None  # too few pairs
    assert scaling_stats.rank_correlation_interval([1, 2, 3, 4], [5, 5, 5, 5]) is None  # constant


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.5, ">", "supported"), (-0.5, -0.1, ">", "contradicted"), (-0.1, 0.5, ">", "undecided"),
    (-0.5, -0.1, "<", "supported"), (0.1, 0.5, "<", "contradicted"), (-0.1, 0.5, "<", "undecided"),
])
def test_the_rule(low, high, direction, expected):
    assert scaling_stats.judge(Interval(0.0, low, high, 5, 0.95, "t"), direction) == expected
    assert scaling_stats.judge(None, direction) == "undecided"


def test_a_claim_of_several_parts():
    assert scaling_stats.combine(["supported", "supported"]) == "supported"
    assert scaling_stats.combine(["supported", "undecided"]) == "undecided"
    assert scaling_stats.combine(["undecided", "contradicted"]) == "contradicted"
    assert scaling_stats.combine([]) == "undecided"


def _table(gfid, probe, rfid, seeds=(0, 1, 2), noise=0.2, rng_seed=0, objectives=("ae", "ae_noise", "vtp")):
    """Rows of a synthetic study: each metric is ``f(objective, decades above 1e13) + noise * N(0, 1)``."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for budget in BUDGETS:
        decades = math.log10(budget / 1e13)
        for objective in objectives:
            point = scaling.GridPoint(objective, budget)
            for seed in seeds:
                rows.append({**point.coordinates(), "point": point.name, "seed": seed, "flops": budget,
                             "psnr": 20.0, "rfid_ref": rfid(objective, decades) + noise * rng.normal(),
                             "linear_probe": probe(objective, decades) + noise / 20 * rng.normal(),
                             "gfid_ref": gfid(objective, decades) + noise * rng.normal(),
                             "chance": 0.1, "pixel_baseline": None})
    return rows


def _verdicts(judged) -> dict[tuple[str, str | None], str]:
    return {(claim["claim"], claim["line"]): claim["verdict"] for claim in judged["claims"]}


def test_the_papers_shape_supports_every_claim():
    rows = _table(gfid=lambda o, d: 60 + 5 * d if o != "vtp" else 50 - 10 * d,
                  probe=lambda o, d: 0.12 if o != "vtp" else 0.2 + 0.1 * d,
                  rfid=lambda o, d: 30 - 8 * d)
    judged = scaling.verdict(rows)
    assert _verdicts(judged) == {("a", "ae"): "supported", ("a", "ae_noise"): "supported", ("b", "vtp"): "supported",
                                 ("c", "vtp - ae"): "supported", ("c", "vtp - ae_noise"): "supported",
                                 ("d", "all points"): "supported"}
    slope = judged["claims"][0]["tests"][1]["interval"]
    assert slope["estimate"] == pytest.approx(5, abs=0.3) and slope["n"] == 12  # every run of the line
    pairs = judged["claims"][3]["tests"][0]["interval"]
    assert pairs["n"] == 12  # one pair per budget and seed
    json.dumps(judged)  # verdict.json
    summary = scaling.summary_markdown(rows)
    assert "## Verdict on the paper's claims" in summary and "| **supported** |" in summary


def test_the_opposite_shape_contradicts_every_claim():
    rows = _table(gfid=lambda o, d: 60 - 10 * d if o != "vtp" else 70 + 5 * d,  # ae improves, vtp worsens
                  # the probe falls with ae's gFID and rises with vtp's: understanding and generation part ways
                  probe=lambda o, d: 0.3 - 0.05 * d if o != "vtp" else 0.6 + 0.05 * d,
                  rfid=lambda o, d: 30 + 8 * d)
    judged = scaling.verdict(rows)
    verdicts = _verdicts(judged)
    assert set(verdicts.values()) == {"contradicted"}, verdicts  # (d): the better probe has the worse gFID
    vtp_over_ae = judged["claims"][3]["tests"]
    assert [test["verdict"] for test in vtp_over_ae] == ["contradicted", "supported"]  # one part contradicts


def test_noise_alone_leaves_every_claim_undecided():
    rows = _table(gfid=lambda o, d: 50.0, probe=lambda o, d: 0.2, rfid=lambda o, d: 30.0, noise=1.0, rng_seed=4)
    verdicts = _verdicts(scaling.verdict(rows))
    assert set(verdicts.values()) == {"undecided"}, verdicts


def test_a_margin_makes_a_stall_count_as_not_improving():
    flat = _table(gfid=lambda o, d: 50.0, probe=lambda o, d: 0.2, rfid=lambda o, d: 30 - 8 * d, noise=0.05,
                  objectives=("ae",))
    assert _verdicts(scaling.verdict(flat))[("a", "ae")] == "undecided"  # flat: neither worse nor better
    judged = scaling.verdict(flat, scaling.VerdictConfig(gfid_margin=1.0))  # a fall under 1 per decade is a stall
    assert _verdicts(judged)[("a", "ae")] == "supported"
    assert {key for key, value in _verdicts(judged).items() if key[0] in "bc"} == {("b", None), ("c", None)}


def test_one_run_per_point_judges_on_the_points_and_missing_generation_decides_nothing():
    rows = _table(gfid=lambda o, d: 60 + 5 * d if o != "vtp" else 50 - 10 * d,
                  probe=lambda o, d: 0.12 if o != "vtp" else 0.2 + 0.1 * d, rfid=lambda o, d: 30 - 8 * d, seeds=(0,))
    judged = scaling.verdict(rows)
    assert judged["claims"][0]["tests"][1]["interval"]["n"] == 4  # four budgets, one run each
    empty = scaling.verdict([dict(row, gfid_ref=None) for row in rows])
    assert {claim["verdict"] for claim in empty["claims"]} == {"undecided"}
    assert {claim["note"] for claim in empty["claims"]} == {"generation was not measured"}


def test_the_plots_draw_each_points_interval_and_the_correlation():
    rows = _table(gfid=lambda o, d: 60 + 5 * d if o != "vtp" else 50 - 10 * d,
                  probe=lambda o, d: 0.12 if o != "vtp" else 0.2 + 0.1 * d, rfid=lambda o, d: 30 - 8 * d)
    gfid_axes = scaling.plot_generation(rows).axes[0]
    lines = {line.get_label(): line for line in gfid_axes.get_lines()}
    assert len(lines["vtp"].get_xdata()) == 4  # one mean per point, not one marker per run
    vtp = [row["gfid_ref"] for row in rows if row["objective"] == "vtp" and row["budget_flops"] == 1e13]
    assert lines["vtp"].get_ydata()[0] == pytest.approx(np.mean(vtp))
    bars = [collection for collection in gfid_axes.collections if collection.get_segments()]
    assert len(bars) == 3  # one set of error bars per line
    low, high = sorted(bars[-1].get_segments()[0][:, 1])
    interval = scaling_stats.mean_interval(vtp)
    assert (low, high) == pytest.approx((interval.low, interval.high))
    scatter = scaling.plot_generation_vs_understanding(rows).axes[0]
    assert "Spearman ρ" in scatter.get_title() and "over 12 points" in scatter.get_title()


def test_a_point_is_the_mean_over_its_seeds_and_one_seed_has_the_fids_own_noise():
    runs = [{"point": "p", "seed": seed, "gfid_ref": value, "gfid_ref_noise": 0.5, "psnr": 20.0 + seed}
            for seed, value in enumerate([10.0, 12.0, 14.0])]
    over_seeds = scaling.point_estimate(runs, "gfid_ref")
    assert over_seeds == scaling_stats.mean_interval([10.0, 12.0, 14.0])  # t over seeds, not the FID's noise
    assert over_seeds.low == pytest.approx(12 - stats.t.ppf(0.975, 2) * 2 / math.sqrt(3))
    one = scaling.point_estimate(runs[:1], "gfid_ref")
    assert (one.estimate, one.n) == (10.0, 1) and "split-half" in one.method
    assert (one.low, one.high) == pytest.approx((10 - 1.959964 * 0.5, 10 + 1.959964 * 0.5))
    psnr = scaling.point_estimate(runs[:1], "psnr")  # no noise estimate: no interval
    assert psnr.estimate == 20.0 and math.isnan(psnr.low)
    assert scaling.point_estimate(runs, "linear_probe") is None
    table = "\n".join(scaling.points_markdown([dict(run, objective="ae") for run in runs[:1]]))
    assert "| p | 1 | 20 | – | 10 [9.02, 10.98]¹ |" in table and "split halves" in table


def test_seeds_are_derived_from_the_run_seed_at_every_depth():
    config = {"seed": 3, "trainer": {"seed": 0, "lr": 1.0}, "sampling": {"seed": 7}, "name": "x", "flag": True}
    assert scaling.derived_seed_overrides(config, 0) == {"seed": 3, "trainer": {"seed": 0}, "sampling": {"seed": 7}}
    assert scaling.derived_seed_overrides(config, 2) == {"seed": 20003, "trainer": {"seed": 20000},
                                                         "sampling": {"seed": 20007}}
    with pytest.raises(ValueError, match="run seed"):
        scaling.derived_seed_overrides(config, -1)
