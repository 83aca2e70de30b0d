"""The scaling study's grid, results rows, trends and plots (vtp_kedro.vtp.scaling)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vtp_kedro.vtp import scaling
from vtp_kedro.vtp.core.config import Config, merge_mappings, with_overrides


def test_the_grid_runs_every_combination_cheapest_budgets_first():
    grid = scaling.ScalingGridConfig(objective=("ae", "vtp"), budget_flops=(4e13, 1e13),
                                     semantic_features=("bottleneck", "trunk"))
    points = scaling.expand_grid(grid)
    assert len(points) == 8
    assert [p.budget_flops for p in points] == [1e13] * 4 + [4e13] * 4
    assert [p.objective for p in points[:2]] == ["ae", "vtp"]
    assert points[0].name == "ae_1e13flops_default_all_bottleneck"
    assert len({p.name for p in points}) == 8


def test_the_grid_refuses_points_that_would_share_a_folder_and_bad_values():
    with pytest.raises(ValueError, match="twice"):
        scaling.expand_grid(scaling.ScalingGridConfig(objective=("ae",), budget_flops=(1.0001e13, 1.0002e13)))
    with pytest.raises(ValidationError, match="positive number of FLOPs"):
        scaling.ScalingGridConfig(objective=("ae",), budget_flops=(0.0,))
    with pytest.raises(ValidationError, match="positive number of samples"):
        scaling.ScalingGridConfig(objective=("ae",), budget_flops=(1e13,), data_size=(0,))
    with pytest.raises(ValidationError):
        scaling.ScalingGridConfig(objective=("autoencoder",), budget_flops=(1e13,))


class _Inner(Config):
    a: int = 1
    b: str = "x"


class _Outer(Config):
    inner: _Inner = _Inner()
    c: float = 2.0


def test_overrides_merge_nested_keys_and_name_a_wrong_key():
    assert merge_mappings({"x": {"y": 1, "z": 2}, "w": 3}, {"x": {"y": 5}}) == {"x": {"y": 5, "z": 2}, "w": 3}
    assert with_overrides(_Outer(), {"inner": {"a": 7}}) == _Outer(inner=_Inner(a=7))
    with pytest.raises(ValueError, match="(?s)overrides of study: outer are invalid.*inner.d"):
        with_overrides(_Outer(), {"inner": {"d": 1}}, "study: outer")


def _metrics(psnr: float, probe: float, gfid: float, gen_acc: float) -> dict:
    return {
        "reconstruction": {"post_gan": {"psnr": psnr, "rfid_ref": 40.0 - psnr, "class_acc_ref": 0.5}},
        "understanding": {"linear_probe": {"top1": probe, "chance": 0.1, "pixel_baseline_top1": 0.15},
                          "zero_shot": {"top1": None}},
        "generation": {"unguided": {"gfid_ref": gfid, "gen_class_acc": gen_acc, "cfg_scale": 1.0},
                       "guided": {"gfid_ref": gfid - 1, "gen_class_acc": gen_acc + 0.05, "cfg_scale": 3.0}},
    }


def _row(objective: str, budget: float, psnr: float, probe: float, gfid: float) -> dict:
    point = scaling.GridPoint(objective, budget)
    return scaling.result_row(point, _metrics(psnr, probe, gfid, 0.2), [{"step": 5, "probe/knn_top1": 0.3},
                                                                       {"step": 10, "probe/knn_top1": probe + 0.01}],
                              {"flops": budget * 1.01, "step": 10}, None, "run-id", 0)


def test_a_result_row_reads_the_paper_protocol_numbers():
    row = _row("vtp", 1e13, 20.0, 0.4, 50.0)
    assert list(row) == list(scaling.RESULT_COLUMNS)
    assert row["psnr"] == 20.0 and row["rfid_ref"] == 20.0 and row["rfid"] is None
    assert row["gfid_ref"] == 50.0 and row["gfid_ref_cfg"] == 49.0  # unguided is the paper's gFID
    assert row["gen_class_acc"] == 0.2 and row["gen_class_acc_cfg"] == pytest.approx(0.25)
    assert row["probe_knn"] == pytest.approx(0.41)  # the online probe's last evaluation
    assert row["flops"] == pytest.approx(1.01e13) and row["steps"] == 10
    assert row["point"] == "vtp_1e13flops_default_all_bottleneck"


@pytest.fixture
def rows() -> list[dict]:
    # ae: reconstruction improves, generation worsens; vtp: both improve (the paper's Figure 4 / 6 shape)
    return [_row("ae", 1e13, 20.0, 0.12, 60.0), _row("vtp", 1e13, 19.0, 0.2, 55.0),
            _row("ae", 4e13, 23.0, 0.12, 62.0), _row("vtp", 4e13, 21.0, 0.35, 40.0)]


def test_trends_report_each_line_from_its_smallest_to_its_largest_budget(rows):
    trends = {trend["line"]: trend for trend in scaling.scaling_trends(rows)}
    assert trends["ae"]["psnr"] == (20.0, 23.0, 3.0)
    assert trends["ae"]["gfid_ref"] == (60.0, 62.0, 2.0)
    assert trends["vtp"]["gfid_ref"] == (55.0, 40.0, -15.0)
    assert "rfid" not in trends["ae"] and "rfid_ref" in trends["ae"]  # the space that was measured
    summary = scaling.summary_markdown(rows)
    assert "| vtp | 1e13 → 4e13 |" in summary and "55 → 40 (-15)" in summary
    assert "chance 0.100, raw-pixel probe 0.150" in summary


def test_plots_draw_one_line_per_objective_in_the_measured_space(rows):
    figure = scaling.plot_generation(rows)
    gfid_axes, class_axes = figure.axes
    assert gfid_axes.get_ylabel() == "gfid_ref" and gfid_axes.get_xscale() == "log"
    lines = {line.get_label(): line for line in gfid_axes.get_lines()}
    assert set(lines) == {"ae", "vtp"}
    assert list(lines["vtp"].get_ydata()) == [55.0, 40.0]
    assert "chance" in {line.get_label() for line in class_axes.get_lines()}
    assert [ax.get_ylabel() for ax in scaling.plot_reconstruction(rows).axes] == ["psnr", "rfid_ref"]
    assert [ax.get_ylabel() for ax in scaling.plot_understanding(rows).axes] == ["linear_probe", "probe_knn"]
    scatter = scaling.plot_generation_vs_understanding(rows).axes[0]
    assert scatter.get_ylabel().startswith("gfid_ref") and len(scatter.collections) == 2


def test_other_varying_axes_split_the_lines(rows):
    extra = [dict(row, semantic_features="trunk", point=row["point"] + "t") for row in rows]
    labels = {trend["line"] for trend in scaling.scaling_trends(rows + extra)}
    assert labels == {"ae, semantic_features bottleneck", "ae, semantic_features trunk",
                      "vtp, semantic_features bottleneck", "vtp, semantic_features trunk"}
