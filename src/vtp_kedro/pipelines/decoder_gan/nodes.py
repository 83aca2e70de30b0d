"""Nodes of the decoder_gan pipeline: fine-tune the decoder through the run plumbing, then compare.

The tokenizer's weights enter the new run through the trainer's ``init_from``; the run's
fingerprint covers the tokenizer's content, so a retrained tokenizer starts a new run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

from matplotlib.figure import Figure
from pydantic import Field

from vtp_kedro.datasets.folder import StagedFolder, write_now
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.data.imagefolder import cropped_batches
from vtp_kedro.vtp.data.loader import PretrainDataConfig
from vtp_kedro.vtp.data.shards import expand_urls
from vtp_kedro.vtp.engine.curves import plot_curves
from vtp_kedro.vtp.engine.trainer import InitFromConfig, TrainerConfig
from vtp_kedro.vtp.inference import load_tokenizer, tokenizer_source, tokenizer_state, write_tokenizer_files
from vtp_kedro.vtp.launch.launcher import LauncherConfig
from vtp_kedro.vtp.launch.runs import train_stage
from vtp_kedro.vtp.metrics.reconstruction import measure_reconstruction, plot_image_grid
from vtp_kedro.vtp.metrics.report import split_report
from vtp_kedro.vtp.stages.decoder_gan import STAGE as DECODER_GAN
from vtp_kedro.vtp.stages.decoder_gan import DecoderGANConfig, DecoderGANRecipe, DecoderGANTaskConfig

GAN_PANELS = (
    ("generator", ("loss", "rec", "l1", "lpips", "g_adv")),
    ("discriminator", ("d_loss", "logits_real", "logits_fake")),
    ("D accuracy, adaptive weight", ("d_accuracy_real", "d_accuracy_fake", "adaptive_weight")),
    ("optimisation", ("generator/lr", "generator/grad_norm", "discriminator/grad_norm")),
)


class GANDataParams(PretrainDataConfig):
    # None reads the data_filtering output; else any image shards (captions are not read).
    shards: str | list[str] | None = None
    image_size: int | None = Field(None, gt=0, description="None: the size the tokenizer was trained at")
    captions: bool = False


class ComparisonParams(Config):
    split: str = "val"
    # The measurement's own LPIPS, as evaluation.reconstruction.lpips_backbone: the training loss's
    # perceptual_backbone may be 'auto' (no LPIPS at all without the VGG16 weights), a metric
    # names the network it ran.
    lpips_backbone: Literal["vgg", "random"] = "vgg"
    max_images: int | None = Field(None, gt=0, description="None: every image of the split")
    batch_size: int = Field(64, gt=0)
    grid_images: int = Field(10, gt=0)


class DecoderGANParams(Config):
    runs_dir: str
    # None: the tokenizer_pretraining output (pretrained_tokenizer); else any tokenizer folder.
    tokenizer: str | None = None
    model: DecoderGANRecipe  # the tokenizer comes from the input tokenizer folder
    data: GANDataParams
    trainer: TrainerConfig
    launcher: LauncherConfig = LauncherConfig()
    comparison: ComparisonParams = ComparisonParams()


def finetune_decoder(pretrained_tokenizer: Path, filtered_shards: Path, params: DecoderGANParams,
                     ) -> tuple[dict[str, Any], list[dict[str, Any]], StagedFolder]:
    """Train the decoder against the discriminator; returns the final checkpoint, its metrics log
    and the GAN-finetuned tokenizer's inference folder (staged)."""
    tokenizer = Path(params.tokenizer or pretrained_tokenizer)
    source = tokenizer_source(tokenizer)  # a folder that is not a tokenizer fails here, naming it
    data = PretrainDataConfig(**{**params.data.model_dump(), "shards": params.data.shards or str(filtered_shards),
                                 "image_size": params.data.image_size or source.image_size, "captions": False})
    task = DecoderGANTaskConfig(model=DecoderGANConfig(tokenizer=source.config, **dict(params.model)), data=data)
    init = InitFromConfig(path=str(tokenizer), source_prefix=source.prefix, target="tokenizer")
    trainer = params.trainer.model_copy(update={"init_from": init})
    run = train_stage(params.runs_dir, trainer, DECODER_GAN, task,
                      {"tokenizer": tokenizer, "shards": expand_urls(data.shards)}, params.launcher)
    export = partial(write_tokenizer_files, state=tokenizer_state(run.checkpoint["model"]), config=source.config,
                     image_size=data.image_size,
                     provenance={"stage": "decoder_gan", "run": run.run_dir.name, "step": run.checkpoint["step"]})
    return run.checkpoint, run.metrics, write_now(export, "gan_tokenizer")


def plot_gan_curves(decoder_gan_training_log: list[dict[str, Any]]) -> Figure:
    return plot_curves(decoder_gan_training_log, title="Decoder GAN fine-tuning", panels=GAN_PANELS)


def compare_reconstructions(pretrained_tokenizer: Path, gan_tokenizer: Path, raw_labelled_images: Path,
                            params: DecoderGANParams,
                            ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Figure]:
    """PSNR, SSIM and LPIPS of the pre- and post-GAN decoders on held-out labelled images (the numbers
    as a DVC metric, how they were measured beside them, MLflow metrics), and a grid original |
    pre-GAN | post-GAN."""
    settings, backbone = params.comparison, params.comparison.lpips_backbone
    tokenizers = {"pre_gan": load_tokenizer(params.tokenizer or pretrained_tokenizer),
                  "post_gan": load_tokenizer(gan_tokenizer)}
    size = tokenizers["post_gan"].image_size

    def batches():
        return cropped_batches(raw_labelled_images, settings.split, size, settings.batch_size, settings.max_images)

    report: dict[str, Any] = measure_reconstruction(tokenizers, batches(), backbone,
                                                    params.model.reconstruction.weights_dir)
    report["protocol"] = {"images": f"{raw_labelled_images}/{settings.split}", "image_size": size,
                          "lpips_backbone": backbone, "ssim": "gaussian 11x11, sigma 1.5, windows inside the image",
                          "psnr": "data range 1"}
    metrics = {f"{name}.{metric}": {"value": float(value), "step": 0}
               for name in tokenizers for metric, value in report[name].items()}
    numbers, protocol = split_report(report)
    # the first image of each class (the split is sorted by class: its first images are one class)
    originals = next(cropped_batches(raw_labelled_images, settings.split, size, settings.grid_images,
                                     settings.grid_images, per_class=1))[0].float() / 255
    rows = {"original": originals, **{name.replace("_", "-"): tok.decode(tok.encode(originals))
                                      for name, tok in tokenizers.items()}}
    figure = plot_image_grid(rows, title=f"{settings.split} reconstructions (LPIPS backbone: {backbone})")
    return numbers, protocol, metrics, figure
