"""Nodes of the data_filtering pipeline: thin calls into ``vtp.curation.filters``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from pydantic import Field, model_validator

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.curation.executors import ExecutorKind
from vtp_kedro.vtp.curation.filter_report import (
    planted_defect_outcome,
    plot_caption_length_histogram,
    plot_resolution_histogram,
    read_filter_report,
    write_filter_report,
)
from vtp_kedro.vtp.curation.filters import FilterRules, filter_shards
from vtp_kedro.vtp.data.shards import expand_urls
from vtp_kedro.vtp.metrics.report import flat_metrics


class DataFilteringParams(Config):
    # None reads the embedded dataset (catalog entry raw_captioned_shards); else a path,
    # glob, brace pattern (shards/{00000..00099}.tar) or fsspec URL of img2dataset shards.
    input_shards: str | None = None
    samples_per_shard: int = Field(gt=0)
    num_workers: int = Field(gt=0)
    executor: ExecutorKind = "processes"
    # dask: None starts a LocalCluster of num_workers processes; else a running scheduler, e.g. tcp://head:8786
    scheduler_address: str | None = None
    dedup_partitions: int = Field(16, gt=0)
    work_dir: str | None = None  # scratch for records, partitions and the staged output; None: the system temporary folder (records), data/.staging (output)
    rules: FilterRules

    @model_validator(mode="after")
    def _address_for_dask(self) -> DataFilteringParams:
        if self.scheduler_address is not None and self.executor != "dask":
            raise ValueError("data_filtering.scheduler_address is set but executor is not 'dask'")
        return self


def filter_captioned_shards(raw_captioned_shards: Path, params: DataFilteringParams) -> StagedFolder:
    """Filter the input shards into a staging folder that the catalog's save moves into place.

    The folder is staged under ``work_dir`` when one is set: on a cluster of several machines the
    workers write the output shards, so it must lie on the file system they share (as the dedup's
    records do); then the save is a rename, or an upload when the catalog path is a URL."""
    urls = expand_urls(params.input_shards or str(raw_captioned_shards))

    def write(output_dir: Path) -> None:
        report = filter_shards(
            urls,
            output_dir,
            params.rules,
            samples_per_shard=params.samples_per_shard,
            num_workers=params.num_workers,
            executor=params.executor,
            scheduler_address=params.scheduler_address,
            dedup_partitions=params.dedup_partitions,
            work_dir=params.work_dir,
        )
        write_filter_report(report, output_dir)

    return write_now(write, "filtered_shards", staging_dir=params.work_dir)


def report_filtering(
    filtered_shards: Path, raw_captioned_shards: Path, params: DataFilteringParams,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Figure, Figure]:
    """Counts per rule (a DVC metric and MLflow metrics), the shard manifest and two histograms.

    On the embedded data (``input_shards: null``), whose generator plants and names faults,
    ``planted_defects`` counts each kind planted and dropped, and the clean samples dropped; real
    data names none, and is not read a second time to find that out."""
    report = read_filter_report(filtered_shards)
    counts = report.to_dict()
    manifest = counts.pop("shards")
    if params.input_shards is None and (outcome := planted_defect_outcome(raw_captioned_shards, filtered_shards)):
        counts["planted_defects"] = outcome
    metrics = flat_metrics(counts)
    return (
        counts,
        metrics,
        manifest,
        plot_resolution_histogram(report),
        plot_caption_length_histogram(report),
    )
