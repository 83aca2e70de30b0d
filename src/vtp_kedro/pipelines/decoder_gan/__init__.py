"""Fine-tune the pixel decoder with a GAN loss, the encoder frozen (paper Section 3.2)."""

from vtp_kedro.pipelines.decoder_gan.pipeline import create_pipeline

__all__ = ["create_pipeline"]
