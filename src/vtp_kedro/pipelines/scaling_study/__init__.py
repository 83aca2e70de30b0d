"""The scaling study: a grid of tokenizer pre-training runs, each judged by the default chain's downstream stages."""

from vtp_kedro.pipelines.scaling_study.pipeline import create_pipeline

__all__ = ["create_pipeline"]
