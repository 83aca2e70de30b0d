"""The VTP tokenizer pre-training stage as a ``TrainTask`` for the project's one trainer.

``build_task`` is the task factory named in the resolved run config
(``"task_factory": "vtp_kedro.vtp.train.tokenizer_pretraining:build_task"``); its ``task``
section is a ``TokenizerPretrainingConfig``: the model and the data stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.metrics.online_probe import OnlineProbe, OnlineProbeConfig
from vtp_kedro.vtp.models.vit import Block
from vtp_kedro.vtp.models.vtp import VTPConfig, VTPModel
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.train.flops import training_step_flops
from vtp_kedro.vtp.train.optim import OptimizerConfig, vit_lr_scales
from vtp_kedro.vtp.train.trainer import TrainTask

TASK_FACTORY = "vtp_kedro.vtp.train.tokenizer_pretraining:build_task"


class TokenizerPretrainingConfig(Config):
    model: VTPConfig
    data: PretrainDataConfig
    probe: OnlineProbeConfig | None = Field(None, description="the online probe, run every trainer.evaluate_every")

    @model_validator(mode="after")
    def _check(self) -> TokenizerPretrainingConfig:
        self.model.tokenizer.check_image_size(self.data.image_size, "data.image_size")
        if self.data.context_length != self.model.text.context_length:
            raise ValueError(f"data.context_length ({self.data.context_length}) must equal "
                             f"model.text.context_length ({self.model.text.context_length})")
        return self


class VTPTask(TrainTask):
    """``VTPModel.training_step`` under the trainer; the EMA teacher follows each applied step."""

    counters = ("samples_rec", "samples_ssl", "samples_clip")

    def __init__(self, model: VTPModel, image_size: int, probe: OnlineProbe | None = None) -> None:
        self.model = model
        self.image_size = image_size
        self.probe = probe

    def training_step(self, batch: Mapping[str, Any], step: int) -> tuple[Tensor, Mapping[str, Tensor]]:
        return self.model.training_step(batch, step)

    def named_trainable_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return self.model.named_trainable_parameters()

    def lr_scales(self, config: OptimizerConfig) -> dict[str, float]:
        """DINOv2's layer-wise decay and patch-embedding factor over the tokenizer's encoder, and
        the SSL heads' own factor (``dino_head.lr_mult``)."""
        names = [name for name, _ in self.named_trainable_parameters()]
        scales = vit_lr_scales(names, "tokenizer.encoder.", self.model.config.tokenizer.encoder.depth,
                               config.layer_decay, config.patch_embed_lr_mult)
        head_mult = self.model.config.dino_head.lr_mult
        return scales | {name: head_mult for name in names if name.startswith(("dino_head.", "ibot_head."))}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.model.update_teacher(step, total_steps)

    def evaluate(self, step: int) -> Mapping[str, float]:
        """The online probe of the student encoder (``metrics.online_probe``), if configured."""
        return self.probe(self.model.tokenizer) if self.probe is not None else {}

    def flops_per_step(self, batch: Mapping[str, Any]) -> float:
        return training_step_flops(self.model.config, len(batch["images"]), self.image_size)["total"]

    def fsdp_units(self) -> Iterable[nn.Module]:
        return [m for m in self.model.modules() if isinstance(m, Block) or type(m).__name__ == "ResidualAttentionBlock"]

    def set_activation_checkpointing(self, enabled: bool) -> None:
        if enabled:  # recompute each transformer block in the backward pass instead of storing it
            units = tuple(self.fsdp_units())
            apply_activation_checkpointing(self.model, check_fn=lambda module: module in units)


def build_task(raw: dict[str, Any]) -> tuple[VTPTask, PretrainDataStream]:
    """The task factory: validate the ``task`` section, build this rank's model and data stream."""
    config = TokenizerPretrainingConfig.model_validate(raw["task"])
    model = VTPModel(config.model, rank=rank())
    data = PretrainDataStream(config.data, rank=rank(), world_size=world_size())
    probe = OnlineProbe(config.probe, config.data.image_size) if config.probe is not None else None
    return VTPTask(model, config.data.image_size, probe), data
