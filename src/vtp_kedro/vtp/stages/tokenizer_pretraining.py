"""VTP: the visual tokenizer pre-trained with one joint loss (paper Section 3, Eq. 2).

    L_total = λ_rec L_rec + λ_ssl L_ssl + λ_clip L_clip,   λ_rec > 0, λ_ssl, λ_clip >= 0
    L_rec   = L1 + w_p LPIPS                                 (B_rec images)
    L_ssl   = L_dino + L_ibot + w_koleo L_koleo              (B_ssl images, EMA teacher)
    L_clip  = symmetric InfoNCE(image CLS, caption)          (all B pairs)

From one batch of B image-caption pairs, CLIP uses all B, SSL a random subset B_ssl and
reconstruction a random subset B_rec (paper: 16k / 4k / 2k), drawn from the model's own
seeded generator so that a step is reproducible and resumable. When CLIP runs, the
reconstruction reuses its encoder pass (decoding the subset's latents) instead of encoding
the images twice. An objective whose λ is 0 is not built and costs no compute.

The VTP tokenizer pre-training stage as a ``TrainTask`` for the project's one trainer.

``STAGE`` (registered as ``"tokenizer_pretraining"``) pairs its task config, a
``TokenizerPretrainingConfig`` (the model, the data stream, the online probe), with ``build_task``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.data.transforms import MultiCrop, MultiCropConfig, block_masks, sample_subsets
from vtp_kedro.vtp.engine.optim import OptimizerConfig, vit_lr_scales
from vtp_kedro.vtp.engine.trainer import TrainTask
from vtp_kedro.vtp.losses.contrastive import ContrastiveLoss
from vtp_kedro.vtp.losses.gan import latent_noise
from vtp_kedro.vtp.losses.reconstruction import (
    ReconstructionLoss,
    ReconstructionLossConfig,
    keep_perceptual_network_out_of_state,
)
from vtp_kedro.vtp.losses.ssl import SSLLoss, SSLLossConfig
from vtp_kedro.vtp.metrics.online_probe import OnlineProbe, OnlineProbeConfig
from vtp_kedro.vtp.models.ema import cosine_momentum, ema_update, make_teacher
from vtp_kedro.vtp.models.heads import CLIPProjection, DINOHead, LogitScale
from vtp_kedro.vtp.models.text import TextConfig, TextEncoder
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig, VisualTokenizer
from vtp_kedro.vtp.models.vit import Block
from vtp_kedro.vtp.stages import Stage
from vtp_kedro.vtp.stages.flops import training_step_flops

Objective = Literal["ae", "ae_noise", "clip_ae", "ssl_ae", "vtp"]
# (λ_ssl, λ_clip) of each named preset; λ_rec is its own setting (paper default 0.1).
OBJECTIVE_PRESETS: dict[str, tuple[float, float]] = {
    "ae": (0.0, 0.0),
    "ae_noise": (0.0, 0.0),
    "clip_ae": (0.0, 1.0),
    "ssl_ae": (1.0, 0.0),
    "vtp": (1.0, 1.0),
}
# The latent-noise tau of each preset that sets one (the others: 0, no noise). ``ae_noise`` is the
# non-semantic control of the scaling study: ``ae`` plus the decoder GAN stage's latent-noise
# regulariser (``losses.gan.latent_noise``, RAE's noise-augmented decoding) during pre-training, so
# that a gain of ``vtp`` over ``ae`` is credited to semantics only where it also beats this control.
# The latents are not normalised (RAE's 0.8 is on normalised ones); 0.5 is of the order of the
# default tiny tokenizer's latent scale at initialisation, an untuned choice.
OBJECTIVE_LATENT_NOISE: dict[str, float] = {"ae_noise": 0.5}


class DINOHeadConfig(Config):
    prototypes: int = Field(65536, gt=0, description="65536 at paper scale, fewer for small runs")
    hidden_dim: int = Field(2048, gt=0)
    bottleneck_dim: int = Field(256, gt=0)
    freeze_last_layer_steps: int = Field(0, ge=0, description="steps the prototypes stay frozen (DINOv2: one epoch)")
    lr_mult: float = Field(1.0, gt=0, description="the DINO (and iBOT) heads' learning rate over the base rate")


class ObjectiveDropPath(Config):
    """Stochastic depth of the encoder's last block in each objective's pass (the authors' model has
    one rate per pass); the EMA teacher never drops. When CLIP runs, reconstruction decodes the
    latents of CLIP's pass, so it shares the CLIP rate."""

    clip: float = Field(0.0, ge=0, lt=1)
    ssl: float = Field(0.0, ge=0, lt=1)
    rec: float = Field(0.0, ge=0, lt=1)


class MaskingConfig(Config):
    """iBOT block masking of the student's global crops (DINOv2's defaults)."""

    ratio_range: tuple[float, float] = (0.1, 0.5)
    probability: float = Field(0.5, ge=0, le=1, description="share of the SSL images that get a mask")


class VTPConfig(Config):
    tokenizer: TokenizerConfig
    text: TextConfig = TextConfig()
    embed_dim: int = Field(512, gt=0, description="joint image-text embedding width of CLIP")
    semantic_features: Literal["trunk", "bottleneck"] = Field(
        "bottleneck", description="what the CLIP/DINO heads read; the paper's linear probe reads the bottleneck"
    )
    objective: Objective = "vtp"
    lambda_rec: float = Field(0.1, gt=0)
    lambda_ssl: float | None = Field(None, ge=0, description="None: the objective preset's value")
    lambda_clip: float | None = Field(None, ge=0, description="None: the objective preset's value")
    latent_noise_tau: float | None = Field(
        None, ge=0, description="tau of the latent noise on the reconstruction's latents in training "
                                "(losses.gan.latent_noise); None: the objective preset's value (ae_noise: "
                                "OBJECTIVE_LATENT_NOISE, the others 0)")
    ssl_fraction: float = Field(0.25, gt=0, le=1, description="B_ssl / B (paper 4k / 16k)")
    rec_fraction: float = Field(0.125, gt=0, le=1, description="B_rec / B (paper 2k / 16k)")
    reconstruction: ReconstructionLossConfig = ReconstructionLossConfig()
    dino_head: DINOHeadConfig = DINOHeadConfig()
    ibot_separate_head: bool = Field(False, description="iBOT's masked patches get their own head of dino_head's "
                                                        "shape (dinov2's ibot.separate_head); False: they share it")
    ssl: SSLLossConfig | None = Field(None, description="None: defaults with out_dim = dino_head.prototypes")
    multicrop: MultiCropConfig = MultiCropConfig()
    masking: MaskingConfig = MaskingConfig()
    drop_path: ObjectiveDropPath | None = Field(None, description="per-objective rates; None: the encoder's "
                                                                  "drop_path for every pass")
    teacher_momentum: tuple[float, float] = Field((0.992, 1.0), description="cosine schedule start, end")
    seed: int = Field(0, ge=0, description="seed of the sub-batch, crop and mask sampler")

    @model_validator(mode="after")
    def _check(self) -> VTPConfig:
        if self.ssl is not None and self.ssl.out_dim != self.dino_head.prototypes:
            raise ValueError(f"ssl.out_dim ({self.ssl.out_dim}) must equal dino_head.prototypes "
                             f"({self.dino_head.prototypes})")
        start, end = self.teacher_momentum
        if not 0 <= start <= end <= 1:
            raise ValueError(f"teacher_momentum must satisfy 0 <= start <= end <= 1, got {self.teacher_momentum}")
        if self.drop_path is not None and self.tokenizer.encoder.drop_path > 0:
            raise ValueError("set either tokenizer.encoder.drop_path (every pass) or drop_path (per objective), "
                             "not both")
        patch = self.tokenizer.encoder.patch_size
        for name in ("global_size", "local_size"):
            if self.lambdas[1] > 0 and getattr(self.multicrop, name) % patch:
                raise ValueError(f"multicrop.{name} ({getattr(self.multicrop, name)}) must be a multiple "
                                 f"of the patch size ({patch})")
        return self

    @property
    def lambdas(self) -> tuple[float, float, float]:
        """(λ_rec, λ_ssl, λ_clip) with the preset filling the unset ones."""
        preset_ssl, preset_clip = OBJECTIVE_PRESETS[self.objective]
        ssl = preset_ssl if self.lambda_ssl is None else self.lambda_ssl
        clip = preset_clip if self.lambda_clip is None else self.lambda_clip
        return self.lambda_rec, ssl, clip

    @property
    def noise_tau(self) -> float:
        """The latent noise's tau with the preset filling an unset one (0: no noise)."""
        if self.latent_noise_tau is not None:
            return self.latent_noise_tau
        return OBJECTIVE_LATENT_NOISE.get(self.objective, 0.0)

    @property
    def ssl_loss(self) -> SSLLossConfig:
        return self.ssl or SSLLossConfig(out_dim=self.dino_head.prototypes, teacher_temperature_warmup_steps=0)


class VTPModel(nn.Module):
    """Student (tokenizer, text tower, heads), EMA teacher and the three objectives.

    ``training_step(batch, step)`` takes ``{"images": (B, 3, H, W) normalised, "tokens":
    (B, context) long}`` and returns ``(loss, metrics)`` with every term separately.
    """

    def __init__(self, config: VTPConfig, rank: int = 0) -> None:
        super().__init__()
        self.config = config
        self.lambda_rec, self.lambda_ssl, self.lambda_clip = config.lambdas
        self.tokenizer = VisualTokenizer(config.tokenizer)
        self.reconstruction_loss = ReconstructionLoss(config.reconstruction)
        semantic_dim = (config.tokenizer.encoder.width if config.semantic_features == "trunk"
                        else config.tokenizer.latent_dim)
        if self.lambda_clip > 0:
            self.text = TextEncoder(config.text, config.embed_dim)
            self.clip_projection = CLIPProjection(semantic_dim, config.embed_dim)
            self.logit_scale = LogitScale()
            self.contrastive_loss = ContrastiveLoss()
        if self.lambda_ssl > 0:
            head = config.dino_head
            self.dino_head = DINOHead(semantic_dim, head.prototypes, head.hidden_dim, head.bottleneck_dim)
            if config.ibot_separate_head:
                self.ibot_head = DINOHead(semantic_dim, head.prototypes, head.hidden_dim, head.bottleneck_dim)
            self.ssl_loss = SSLLoss(config.ssl_loss)
            self.multicrop = MultiCrop(config.multicrop)
            self.teacher = make_teacher(nn.ModuleDict(self._teacher_pairs_student()))
        keep_perceptual_network_out_of_state(self, "reconstruction_loss")
        # Sub-batches, crops and masks come from this generator (checkpointed with the model);
        # each rank draws its own from its local batch.
        self.sampler = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)

    def _teacher_pairs_student(self) -> dict[str, nn.Module]:
        pairs = {"encoder": self.tokenizer.encoder, "bottleneck": self.tokenizer.bottleneck,
                 "dino_head": self.dino_head}
        if self.config.ibot_separate_head:
            pairs["ibot_head"] = self.ibot_head
        return pairs

    @staticmethod
    def patch_head(model: nn.Module) -> DINOHead:
        """The head of the masked patches in the student (``self``) or the teacher: iBOT's own, or DINO's."""
        head = getattr(model, "ibot_head", None)
        return model.dino_head if head is None else head

    def semantic_tokens(self, encoder: nn.Module, bottleneck: nn.Module, images: Tensor,
                        mask: Tensor | None = None) -> Tensor:
        trunk = encoder(images, mask)
        return trunk if self.config.semantic_features == "trunk" else bottleneck(trunk)

    # --- the three objectives -------------------------------------------------------
    def clip_objective(self, semantic_cls: Tensor, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.contrastive_loss(self.clip_projection(semantic_cls), self.text(tokens),
                                              self.logit_scale())
        return loss, {"clip": loss.detach(), **metrics}

    def reconstruction_objective(self, latent: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_rec of the decoded latents; in training mode with a latent-noise tau > 0 (``ae_noise``,
        or ``latent_noise_tau`` set) the decoder reads ``latent_noise(latent)``, the decoder GAN
        stage's regulariser, drawn from the model's seeded sampler. In eval mode, and at tau 0,
        nothing is drawn and the latents pass unchanged."""
        tau = self.config.noise_tau if self.training else 0.0
        reconstruction = self.tokenizer.decode(latent_noise(latent, tau, self.sampler))
        loss, metrics = self.reconstruction_loss(reconstruction, targets)
        return loss, {"rec": loss.detach(), **metrics}

    def ssl_objective(self, images: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        global_crops, local_crops = self.multicrop(images, self.sampler)
        n_global, batch = len(global_crops), len(images)
        globals_stacked = torch.cat(global_crops)
        grid = self.tokenizer.encoder.grid_size(globals_stacked)
        masks = block_masks(n_global * batch, grid, generator=self.sampler,
                            mask_ratio_range=self.config.masking.ratio_range,
                            mask_probability=self.config.masking.probability).to(images.device)
        with torch.no_grad():
            teacher = self.teacher
            t_tokens = self.semantic_tokens(teacher.encoder, teacher.bottleneck, globals_stacked)
            teacher_cls = teacher.dino_head(t_tokens[:, 0]).chunk(n_global)
            teacher_patch = self.patch_head(teacher)(t_tokens[:, 1:][masks])
        encoder, bottleneck = self.tokenizer.encoder, self.tokenizer.bottleneck
        self._set_drop_path("ssl")
        frozen = step < self.config.dino_head.freeze_last_layer_steps
        s_global = self.semantic_tokens(encoder, bottleneck, globals_stacked, masks)
        student_cls = list(self.dino_head(s_global[:, 0], frozen).chunk(n_global))
        if local_crops:
            s_local = self.semantic_tokens(encoder, bottleneck, torch.cat(local_crops))
            student_cls += list(self.dino_head(s_local[:, 0], frozen).chunk(len(local_crops)))
        student_patch = self.patch_head(self)(s_global[:, 1:][masks], frozen)
        loss, metrics = self.ssl_loss(student_cls, teacher_cls, student_patch, teacher_patch, masks,
                                      s_global[:, 0].chunk(n_global), step)
        return loss, {"ssl": loss.detach(), **metrics}

    def _set_drop_path(self, objective: Literal["clip", "ssl", "rec"]) -> None:
        if self.config.drop_path is not None:
            self.tokenizer.encoder.set_drop_path(getattr(self.config.drop_path, objective))

    # --- one step -------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["images"]
        ssl_idx, rec_idx = sample_subsets(
            len(images),
            self.config.ssl_fraction if self.lambda_ssl > 0 else 0.0,
            self.config.rec_fraction,
            self.sampler,
        )
        ssl_idx, rec_idx = ssl_idx.to(images.device), rec_idx.to(images.device)
        metrics: dict[str, Tensor] = {}
        total = images.new_zeros(())
        if self.lambda_clip > 0:
            self._set_drop_path("clip")
            feats = self.tokenizer.forward_features(images)
            semantic = self.tokenizer.semantic_features(feats, self.config.semantic_features)
            clip, clip_metrics = self.clip_objective(semantic[:, 0], batch["tokens"])
            total = total + self.lambda_clip * clip
            metrics.update(clip_metrics)
            latent = feats.latent()[rec_idx]
        else:
            self._set_drop_path("rec")
            latent = self.tokenizer.encode(images[rec_idx])
        rec, rec_metrics = self.reconstruction_objective(latent, images[rec_idx])
        total = total + self.lambda_rec * rec
        metrics.update(rec_metrics)
        if self.lambda_ssl > 0:
            ssl, ssl_metrics = self.ssl_objective(images[ssl_idx], step)
            total = total + self.lambda_ssl * ssl
            metrics.update(ssl_metrics)
        metrics["loss"] = total.detach()
        # The images each objective used (the trainer keeps running totals): plots against data
        # seen must not credit the ae preset with the whole batch it only sub-samples.
        metrics["samples_rec"] = torch.tensor(float(len(rec_idx)))
        metrics["samples_ssl"] = torch.tensor(float(len(ssl_idx) if self.lambda_ssl > 0 else 0))
        metrics["samples_clip"] = torch.tensor(float(len(images) if self.lambda_clip > 0 else 0))
        return total, metrics

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int) -> float:
        """EMA of the student into the teacher after an optimiser step; returns the momentum."""
        if self.lambda_ssl == 0:
            return 1.0
        start, end = self.config.teacher_momentum
        momentum = cosine_momentum(step, total_steps, start, end)
        for name, student in self._teacher_pairs_student().items():
            ema_update(self.teacher[name], student, momentum)
        return momentum

    def train(self, mode: bool = True) -> VTPModel:
        """Switch the student; the EMA teacher stays in eval mode (as dinov2's ``train()`` forces it),
        so it never applies drop path, dropout or any other stochastic layer."""
        super().train(mode)
        if self.lambda_ssl > 0:
            self.teacher.eval()
        return self

    def named_trainable_parameters(self):
        """The student's parameters (the teacher and the frozen LPIPS network are excluded)."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    # The sampler's state travels in state_dict() so that a resumed run draws the same sub-batches.
    def get_extra_state(self) -> Tensor:
        return self.sampler.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.sampler.set_state(state)


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


def build_task(config: TokenizerPretrainingConfig) -> tuple[VTPTask, PretrainDataStream]:
    """This rank's model, online probe and data stream."""
    model = VTPModel(config.model, rank=rank())
    data = PretrainDataStream(config.data, rank=rank(), world_size=world_size())
    probe = OnlineProbe(config.probe, config.data.image_size) if config.probe is not None else None
    return VTPTask(model, config.data.image_size, probe), data


STAGE = Stage("tokenizer_pretraining", TokenizerPretrainingConfig, build_task)
