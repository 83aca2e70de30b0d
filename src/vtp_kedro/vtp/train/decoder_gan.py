"""The decoder GAN stage as a ``TrainTask``: generator (the pixel decoder) then discriminator, each step.

``build_task`` is the task factory named in the resolved run config
(``"task_factory": "vtp_kedro.vtp.train.decoder_gan:build_task"``); its ``task`` section is a
``DecoderGANTaskConfig``. The tokenizer's weights come in through the trainer's ``init_from``
(``target: tokenizer``); encoder and bottleneck are frozen modules, so they never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import model_validator
from torch import Tensor

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.models.decoder_gan import DecoderGANConfig, DecoderGANModel
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.train.optim import OptimizerConfig, build_adamw
from vtp_kedro.vtp.train.trainer import TrainTask

TASK_FACTORY = "vtp_kedro.vtp.train.decoder_gan:build_task"


class DecoderGANTaskConfig(Config):
    model: DecoderGANConfig
    data: PretrainDataConfig

    @model_validator(mode="after")
    def _check(self) -> DecoderGANTaskConfig:
        self.model.tokenizer.check_image_size(self.data.image_size, "data.image_size")
        if self.data.captions:
            raise ValueError("data.captions must be false: the decoder GAN stage reads images only")
        return self


class DecoderGANTask(TrainTask):
    optimizer_names = ("generator", "discriminator")

    def __init__(self, model: DecoderGANModel) -> None:
        self.model = model

    def training_step(self, batch: Mapping[str, Any], step: int, optimizer: str) -> tuple[Tensor, dict[str, Tensor]]:
        if optimizer == "generator":
            return self.model.generator_step(batch["images"], step)
        return self.model.discriminator_step(batch["images"], step)

    def configure_optimizers(self, configs: Mapping[str, OptimizerConfig]) -> dict[str, torch.optim.Optimizer]:
        named = list(self.model.named_parameters())
        decoder = [(n, p) for n, p in named if n.startswith("tokenizer.decoder.")]
        discriminator = [(n, p) for n, p in named if n.startswith("discriminator.") and p.requires_grad]
        return {"generator": build_adamw(decoder, configs["generator"]),
                "discriminator": build_adamw(discriminator, configs["discriminator"])}

    def frozen_modules(self):
        return self.model.frozen


def build_task(raw: dict[str, Any]) -> tuple[DecoderGANTask, PretrainDataStream]:
    """The task factory: validate the ``task`` section, build this rank's model and image stream."""
    config = DecoderGANTaskConfig.model_validate(raw["task"])
    data = PretrainDataStream(config.data, rank=rank(), world_size=world_size())
    return DecoderGANTask(DecoderGANModel(config.model, rank=rank())), data
