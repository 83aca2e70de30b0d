"""The embedded default dataset: procedural captioned shards and an ImageNet-style labelled folder."""

from vtp_kedro.pipelines.data_generation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
