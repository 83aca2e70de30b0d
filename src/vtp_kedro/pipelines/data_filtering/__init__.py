"""Filter raw image-caption shards by rules and dedup, re-shard them, and report what was dropped."""

from vtp_kedro.pipelines.data_filtering.pipeline import create_pipeline

__all__ = ["create_pipeline"]
