"""Train LightningDiT on the latents with the fixed flow-matching recipe, then sample class-conditionally."""

from vtp_kedro.pipelines.dit_training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
