"""Judge the tokenizer on reconstruction, understanding and generation, and report every number with its protocol."""

from vtp_kedro.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
