"""Write the embedded dataset in the formats real users bring, so the real readers are exercised."""

from __future__ import annotations

from functools import partial

from pydantic import Field

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.synthetic.generator import (
    SyntheticConfig,
    write_captioned_shards,
    write_labelled_folder,
)


class CaptionedSplitParams(Config):
    count: int = Field(gt=0)
    samples_per_shard: int = Field(gt=0)
    defect_fraction: float = Field(0.0, ge=0, le=1)  # share of samples spoilt as web data is (DEFECTS)


class LabelledSplitParams(Config):
    train_per_class: int = Field(gt=0)
    val_per_class: int = Field(gt=0)


class DataGenerationParams(Config):
    generator: SyntheticConfig
    captioned: CaptionedSplitParams
    labelled: LabelledSplitParams


def generate_captioned_shards(params: DataGenerationParams) -> StagedFolder:
    """Image-caption pairs as img2dataset-style WebDataset shards (``key.jpg``/``.txt``/``.json``)."""
    return write_now(partial(
        write_captioned_shards,
        config=params.generator,
        count=params.captioned.count,
        samples_per_shard=params.captioned.samples_per_shard,
        defect_fraction=params.captioned.defect_fraction,
    ), "captioned_shards")


def generate_labelled_images(params: DataGenerationParams) -> StagedFolder:
    """A class-balanced ImageNet-style folder (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``)."""
    return write_now(partial(
        write_labelled_folder,
        config=params.generator,
        train_per_class=params.labelled.train_per_class,
        val_per_class=params.labelled.val_per_class,
    ), "labelled_images")
