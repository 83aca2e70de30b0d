"""Plots of a data-filtering run: what came in against what was kept.

Figures are built with :class:`matplotlib.figure.Figure` directly, not pyplot, so nothing
touches global state and no display backend is needed; save them with ``fig.savefig``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vtp_kedro.vtp.core.io import join, write_bytes
from vtp_kedro.vtp.curation.filters import FilterReport
from vtp_kedro.vtp.data.shards import SHARD_MANIFEST, ShardInfo, expand_urls, iter_shard_samples

REPORT_FILE = SHARD_MANIFEST  # the report lists each shard's samples and sha256
STATS_FILE = "filter_stats.npz"


def write_filter_report(report: FilterReport, folder: str | Path) -> None:
    """Store the report beside the shards it describes (``*.tar`` globs do not pick these up).

    ``folder`` may be an fsspec URL; the report goes last, since it marks the output complete."""
    stats = io.BytesIO()
    np.savez_compressed(stats, widths=report.widths, heights=report.heights,
                        caption_words=report.caption_words, kept_mask=report.kept_mask)
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True).encode()
    write_bytes(join(folder, STATS_FILE), stats.getvalue())
    write_bytes(join(folder, REPORT_FILE), text)


def read_filter_report(folder: str | Path) -> FilterReport:
    """The report ``write_filter_report`` stored in ``folder`` (a path or an fsspec URL)."""
    path = join(folder, REPORT_FILE)
    fs, fs_path = fsspec.core.url_to_fs(str(path))
    if not fs.isfile(fs_path):
        raise FileNotFoundError(f"no filter report {path}: is {folder} the output of the data_filtering pipeline "
                                "(and did that run finish)?")
    counts = json.loads(fs.cat_file(fs_path))
    with fsspec.open(str(join(folder, STATS_FILE)), "rb") as file, np.load(io.BytesIO(file.read())) as stats:
        return FilterReport(
            total=counts["total"], kept=counts["kept"], dropped=counts["dropped"],
            shard_errors=counts["shard_errors"], shards=[ShardInfo(**s) for s in counts["shards"]],
            widths=stats["widths"], heights=stats["heights"],
            caption_words=stats["caption_words"], kept_mask=stats["kept_mask"],
        )

def planted_defect_outcome(input_shards: str | Path, filtered_shards: str | Path) -> dict[str, Any] | None:
    """What the filter did with the faults a generator planted (samples whose JSON names a ``defect``).

    Returns ``{"planted": {defect: {"planted": n, "dropped": n}}, "clean": {"total": n, "dropped": n}}``
    (``clean``: the samples with no planted fault, of which none should be dropped but by a
    true duplicate), or None when no input sample names a defect (real data).
    """
    planted: dict[str, dict[str, int]] = {}
    clean = {"total": 0, "dropped": 0}
    kept = {sample["__key__"] for url in expand_urls(str(join(filtered_shards, "*.tar")))
            for sample in iter_shard_samples(url)}
    for url in expand_urls(str(input_shards)):
        for sample in iter_shard_samples(url):
            raw = sample.get("json")
            defect = json.loads(raw).get("defect") if raw else None
            tally = clean if defect is None else planted.setdefault(defect, {"planted": 0, "dropped": 0})
            tally["total" if defect is None else "planted"] += 1
            tally["dropped"] += sample["__key__"] not in kept
    if not planted:
        return None
    return {"planted": dict(sorted(planted.items())), "clean": clean}


_MAX_INTEGER_BINS = 100


def _integer_bin_edges(values: np.ndarray) -> np.ndarray:
    """One bin per integer for small ranges, else an automatic choice; always shared by both series."""
    if values.size == 0:
        return np.arange(2) - 0.5
    low, high = int(values.min()), int(values.max())
    if high - low <= _MAX_INTEGER_BINS:
        return np.arange(low, high + 2) - 0.5
    return np.histogram_bin_edges(values, bins="auto")


def _overlay(ax: Axes, values: np.ndarray, kept: np.ndarray, xlabel: str, title: str) -> None:
    """Input and kept histograms of ``values`` on the same bins."""
    edges = _integer_bin_edges(values)
    ax.hist(values, bins=edges, color="tab:gray", alpha=0.6, label=f"input ({values.size})")
    ax.hist(values[kept], bins=edges, color="tab:blue", alpha=0.8, label=f"kept ({int(kept.sum())})")
    ax.set_yscale("log")  # the rare outliers a filter removes are what the plot is for
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples (log scale)")
    ax.set_title(title)
    ax.legend()


def plot_resolution_histogram(report: FilterReport) -> Figure:
    """Width and height of the decodable input images, input vs kept."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    width_ax, height_ax = fig.subplots(1, 2)
    _overlay(width_ax, report.widths, report.kept_mask, "width (px)", "Image width")
    _overlay(height_ax, report.heights, report.kept_mask, "height (px)", "Image height")
    fig.suptitle("Resolution of decodable input images")
    return fig


def plot_caption_length_histogram(report: FilterReport) -> Figure:
    """Caption word counts of the decodable input samples with a valid caption, input vs kept."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    has_caption = report.caption_words >= 0
    _overlay(ax, report.caption_words[has_caption], report.kept_mask[has_caption],
             "caption length (words)", "Caption length")
    return fig
