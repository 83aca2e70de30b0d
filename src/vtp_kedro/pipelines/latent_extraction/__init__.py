"""Encode a labelled image folder (and its mirror images) into latent shards with the GAN-finetuned tokenizer."""

from vtp_kedro.pipelines.latent_extraction.pipeline import create_pipeline

__all__ = ["create_pipeline"]
