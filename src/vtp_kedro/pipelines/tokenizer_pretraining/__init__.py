"""Pre-train the VTP tokenizer (reconstruction + SSL + CLIP) on the filtered shards."""

from vtp_kedro.pipelines.tokenizer_pretraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
