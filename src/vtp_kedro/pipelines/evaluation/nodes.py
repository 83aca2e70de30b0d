"""Nodes of the evaluation pipeline: the tokenizer judged on reconstruction, understanding and generation.

Every FID-type number is measured in each configured feature space (``inception`` needs its
weights file; ``reference`` is the classifier trained here) and carries its protocol: the
extractor, the image counts on each side, the reference set and, for samples, the sampler.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from matplotlib.figure import Figure
from pydantic import Field

from vtp_kedro.datasets.folder import FolderWriter, StagedFolder, write_now
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import DeviceKind, resolve_device
from vtp_kedro.vtp.core.io import project_relative
from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder, LabelledSplit, cropped_batches
from vtp_kedro.vtp.engine.curves import plot_stage_curves
from vtp_kedro.vtp.inference import NoTextTowerError, load_clip_towers, load_tokenizer, tokenizer_source
from vtp_kedro.vtp.launch.sample_dit import SAME_AS_KEY, SETTINGS_FILE, read_samples, samples_per_class
from vtp_kedro.vtp.metrics.fidelity import FeatureSpace, extract_features, inception_space, reference_space
from vtp_kedro.vtp.metrics.generation import (
    adm_reference_batch,
    cached_features,
    class_accuracy,
    fidelity_metrics,
    uint8_batches,
)
from vtp_kedro.vtp.metrics.reconstruction import measure_reconstruction, plot_image_grid
from vtp_kedro.vtp.metrics.reference import (
    ReferenceClassifierConfig,
    read_reference_record,
    train_reference_classifier,
    write_reference_classifier,
)
from vtp_kedro.vtp.metrics.report import PAPER_REFERENCE, flat_metrics, headline_table, split_report, summary_markdown
from vtp_kedro.vtp.metrics.understanding import (
    DINOV2_LEARNING_RATES,
    ProbeFeatures,
    confusion_matrix,
    linear_probe,
    pixel_features,
    plot_confusion_matrix,
    probe_features,
    top_k_accuracy,
    zero_shot_classifier,
    zero_shot_logits,
)

log = logging.getLogger(__name__)


class ReconstructionParams(Config):
    split: str = "val"
    max_images: int | None = Field(None, gt=0, description="None: every image of the split (ImageNet val: 50k)")
    lpips_backbone: Literal["vgg", "random"] = "vgg"
    grid_images: int = Field(10, gt=0)


class UnderstandingParams(Config):
    features: ProbeFeatures = "bottleneck"
    max_train_images: int | None = Field(None, gt=0, description="None: the whole train split")
    learning_rates: tuple[float, ...] = DINOV2_LEARNING_RATES
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(256, gt=0)
    seed: int = Field(0, ge=0)
    zero_shot: bool = True
    pixel_baseline_size: int | None = Field(8, gt=0, description="side of the raw-pixel probe baseline; None: off")


class GenerationParams(Config):
    reference: str = Field("train", description="'train': the labelled train split's features (cached); "
                                                "else the path of an ADM reference batch .npz")
    reference_max_images: int | None = Field(None, gt=0, description="None: the whole train split")
    grid_per_class: int = Field(8, gt=0)
    fid_noise_splits: int = Field(4, ge=0, description="random halvings of the unguided samples for gfid*_noise, one "
                                                       "gFID's own sampling noise (fid_split_half_noise); 0: off. "
                                                       "Each costs two FIDs (Inception's 2048 dims: ~15 s each "
                                                       "on one CPU core)")


class EvaluationParams(Config):
    device: DeviceKind = "auto"
    image_root: str | None = Field(None, description="None: the folder the latents came from "
                                                     "(latent_extraction.image_root, else the embedded labelled "
                                                     "folder); else an ImageNet-style folder with the same classes")
    batch_size: int = Field(250, gt=0)
    num_workers: int = Field(0, ge=0)
    feature_spaces: tuple[Literal["inception", "reference"], ...] = Field(("reference",), min_length=1)
    weights_dir: str | None = None
    cache_dir: str = "data/07_model_output/evaluation_cache"
    reference_classifier: ReferenceClassifierConfig = ReferenceClassifierConfig()
    reconstruction: ReconstructionParams = ReconstructionParams()
    understanding: UnderstandingParams = UnderstandingParams()
    generation: GenerationParams = GenerationParams()


def latent_image_root(latent_extraction: Any) -> str | None:
    """``latent_extraction.image_root``: from Kedro's parameters (a dict) or a typed config (the scaling study)."""
    if latent_extraction is None:
        return None
    if isinstance(latent_extraction, Mapping):
        return latent_extraction.get("image_root")
    return getattr(latent_extraction, "image_root", None)


def _root(raw_labelled_images: Path, params: EvaluationParams, latent_extraction: Any = None) -> Path:
    """The labelled folder the evaluation reads: ``evaluation.image_root``, else the one the latents came
    from (``latent_extraction.image_root``), else the embedded one. One setting points the whole chain at
    a user's folder; ``vtp_kedro.pipelines.chain`` refuses settings that disagree before any node runs."""
    # project-relative, so that the protocols are the same in every clone
    return Path(project_relative(params.image_root or latent_image_root(latent_extraction) or raw_labelled_images))


def _spaces(reference_classifier: Path, params: EvaluationParams) -> list[FeatureSpace]:
    """The configured feature spaces; a missing Inception weight file fails here, naming it."""
    return [inception_space(params.weights_dir) if name == "inception"
            else reference_space(Path(project_relative(reference_classifier))) for name in params.feature_spaces]


def _load_split(root: Path, split: str, size: int, params: EvaluationParams, per_class: int | None) -> LabelledSplit:
    images, labels = zip(*cropped_batches(root, split, size, params.batch_size, None, params.num_workers, per_class))
    return LabelledSplit(torch.cat(images), torch.cat(labels), tuple(LabelledImageFolder(root, split).classes))


def fit_reference_classifier(gan_tokenizer: Path, raw_labelled_images: Path, params: EvaluationParams,
                             latent_extraction: Any = None) -> StagedFolder:
    """The reference classifier, trained here: SmallCNN on the train split at the tokenizer's size.

    The first node of the pipeline, so a missing Inception weight file fails here, before any work."""
    _require_inception_weights(params)  # before the tokenizer is read
    size = params.reference_classifier.image_size or tokenizer_source(gan_tokenizer).image_size
    root = _root(raw_labelled_images, params, latent_extraction)
    return write_now(reference_classifier_writer(root, params, size), "reference_classifier")


def _require_inception_weights(params: EvaluationParams) -> None:
    if "inception" in params.feature_spaces:
        inception_space(params.weights_dir)


def reference_classifier_writer(raw_labelled_images: Path, params: EvaluationParams, image_size: int) -> FolderWriter:
    """The reference classifier's writer, training at ``reference_classifier.image_size`` or else
    ``image_size`` on ``evaluation.image_root`` or else ``raw_labelled_images``; a missing Inception
    weight file fails here."""
    _require_inception_weights(params)
    settings, root = params.reference_classifier, _root(raw_labelled_images, params)
    size = settings.image_size or image_size

    def write(folder: Path) -> None:
        started = time.perf_counter()
        train = _load_split(root, "train", size, params, settings.train_per_class)
        val = _load_split(root, params.reconstruction.split, size, params, None)
        log.info("reference classifier: %d train and %d %s images of %s at %d px read in %.0f s; training "
                 "SmallCNN for %d epochs", len(train.labels), len(val.labels), params.reconstruction.split, root,
                 size, time.perf_counter() - started, settings.epochs)
        write_reference_classifier(folder, *train_reference_classifier(train, val, settings,
                                                                        resolve_device(params.device)))

    return write


def evaluate_reconstruction(pretrained_tokenizer: Path, gan_tokenizer: Path, raw_labelled_images: Path,
                            reference_classifier: Path, params: EvaluationParams,
                            latent_extraction: Any = None) -> tuple[dict[str, Any], Figure]:
    """PSNR, SSIM, LPIPS and rFID of the pre- and post-GAN tokenizers on the val split, and the grid."""
    settings, root = params.reconstruction, _root(raw_labelled_images, params, latent_extraction)
    spaces, device = _spaces(reference_classifier, params), resolve_device(params.device)
    tokenizers = {"pre_gan": load_tokenizer(pretrained_tokenizer, device),
                  "post_gan": load_tokenizer(gan_tokenizer, device)}
    size = tokenizers["post_gan"].image_size
    batches = cropped_batches(root, settings.split, size, params.batch_size, settings.max_images, params.num_workers)
    report: dict[str, Any] = measure_reconstruction(tokenizers, batches, settings.lpips_backbone, params.weights_dir,
                                                    spaces, reference_space(reference_classifier), device)
    report["protocol"] = {"images": f"{root}/{settings.split}", "count": report["post_gan"]["images"],
                          "image_size": size, "preprocessing": "center_crop_arr", "lpips_backbone": settings.lpips_backbone,
                          "fid_pairs": "originals vs their uint8 reconstructions, the same images on both sides",
                          "feature_spaces": {space.name: space.describe() for space in spaces}}
    # the first image of each class (the split is sorted by class: its first images are one class)
    originals = next(cropped_batches(root, settings.split, size, settings.grid_images, settings.grid_images,
                                     per_class=1))[0]
    originals = originals.to(device).float() / 255
    rows = {"original": originals.cpu(), **{name.replace("_", "-"): tok.decode(tok.encode(originals)).cpu()
                                            for name, tok in tokenizers.items()}}
    return report, plot_image_grid(rows, title=f"{settings.split} reconstructions: original | pre-GAN | post-GAN")


def _features(tokenizer: Any, root: Path, split: str, params: EvaluationParams, max_images: int | None,
              towers: Any = None, classifier: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    settings = params.understanding
    device = next(tokenizer.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"features": [], "labels": [], "pixels": [], "zero_shot": []}
    for images, labels in cropped_batches(root, split, tokenizer.image_size, params.batch_size, max_images,
                                          params.num_workers):
        x = images.to(device).float() / 255
        parts["features"].append(probe_features(tokenizer, x, settings.features).cpu())
        parts["labels"].append(labels)
        if settings.pixel_baseline_size:
            small = torch.nn.functional.interpolate(x, size=settings.pixel_baseline_size, mode="area")
            parts["pixels"].append(pixel_features((small * 255).round()).cpu())
        if towers is not None:
            parts["zero_shot"].append(zero_shot_logits(towers, x, classifier).cpu())
    return {name: torch.cat(values) for name, values in parts.items() if values}


def evaluate_understanding(tokenizer_checkpoint: dict[str, Any], pretrained_tokenizer: Path, raw_labelled_images: Path,
                           reference_classifier: Path, params: EvaluationParams,
                           latent_extraction: Any = None) -> tuple[dict[str, Any], Figure]:
    """Linear probe (DINOv2's protocol) and zero-shot on the val split, beside chance, a raw-pixel probe and
    the supervised reference classifier; the probe's confusion matrix."""
    settings, root = params.understanding, _root(raw_labelled_images, params, latent_extraction)
    device = resolve_device(params.device)
    tokenizer = load_tokenizer(pretrained_tokenizer, device)
    classifier_record = read_reference_record(reference_classifier)
    towers = classifier = template_set = None
    zero_shot: dict[str, Any] = {"top1": None, "top5": None}
    if settings.zero_shot:
        try:
            towers = load_clip_towers(tokenizer_checkpoint["path"], device)
            classifier, template_set = zero_shot_classifier(towers, classifier_record["classes"])
        except NoTextTowerError as exc:
            zero_shot["skipped"] = str(exc)
    train = _features(tokenizer, root, "train", params, settings.max_train_images)
    val = _features(tokenizer, root, params.reconstruction.split, params, None, towers, classifier)
    count = len(classifier_record["classes"])
    probe_args = dict(learning_rates=settings.learning_rates, epochs=settings.epochs, batch_size=settings.batch_size,
                      seed=settings.seed)
    probe = linear_probe(train["features"], train["labels"], val["features"], val["labels"], count, **probe_args)
    chance = float(torch.bincount(val["labels"], minlength=count).max()) / len(val["labels"])
    report: dict[str, Any] = {"linear_probe": {
        "top1": probe.top1, "top5": probe.top5, "lr": probe.lr, "features": settings.features,
        "feature_dim": int(train["features"].shape[1]), "chance": chance,
        "top1_per_lr": {f"{lr:g}": value for lr, value in probe.top1_per_lr.items()},
        "supervised_cnn_top1": classifier_record["val_top1"],
        "train_images": len(train["labels"]), "val_images": len(val["labels"]),
        "protocol": "DINOv2 linear eval: SGD momentum 0.9, no weight decay, cosine, lr sweep, best val top-1",
    }}
    if "pixels" in train:
        baseline = linear_probe(train["pixels"], train["labels"], val["pixels"], val["labels"], count, **probe_args)
        report["linear_probe"]["pixel_baseline_top1"] = baseline.top1
        report["linear_probe"]["pixel_baseline"] = f"the same probe on {settings.pixel_baseline_size}px raw pixels"
    if "zero_shot" in val:
        logits = val["zero_shot"]
        zero_shot = {"top1": top_k_accuracy(logits, val["labels"], 1),
                     "top5": top_k_accuracy(logits, val["labels"], 5) if count > 5 else None,
                     "templates": template_set, "chance": chance}
    report["zero_shot"] = zero_shot
    matrix = confusion_matrix(probe.predictions, val["labels"], count)
    report["linear_probe"]["confusion_matrix"] = matrix.tolist()
    title = f"linear probe on {settings.features} features: top-1 {probe.top1:.3f} (chance {chance:.3f})"
    return report, plot_confusion_matrix(matrix, classifier_record["classes"], title)


def _unguided_set(folder: Path, guided: Path) -> Path:
    """The unguided sample folder, or the guided one where sampling said they are the same (CFG scale 1)."""
    record = json.loads((Path(folder) / SETTINGS_FILE).read_text()) if (Path(folder) / SETTINGS_FILE).is_file() else {}
    return Path(guided) if SAME_AS_KEY in record else Path(folder)


def evaluate_generation(dit_samples: Path, dit_samples_unguided: Path, raw_labelled_images: Path,
                        reference_classifier: Path, params: EvaluationParams,
                        latent_extraction: Any = None) -> tuple[dict[str, Any], Figure]:
    """gFID, IS, precision/recall and gen_class_acc of the samples without guidance and with the configured
    CFG, each with its protocol; and a grid of the guided samples per class."""
    settings, root = params.generation, _root(raw_labelled_images, params, latent_extraction)
    spaces, device = _spaces(reference_classifier, params), resolve_device(params.device)
    extractors = {space.name: space.create(device) for space in spaces}
    classifier = reference_space(reference_classifier).create(device)
    expected = read_reference_record(reference_classifier)["classes"]
    report: dict[str, Any] = {}
    for name, folder in (("unguided", _unguided_set(dit_samples_unguided, dit_samples)), ("guided", Path(dit_samples))):
        if name == "guided" and folder == _unguided_set(dit_samples_unguided, dit_samples):
            report[name] = report["unguided"]  # CFG scale 1: one set, scored once
            continue
        pixels, labels, record = read_samples(folder)
        classes = record["classes"]
        if classes != expected:
            raise ValueError(f"{folder}: the samples' classes {classes} are not the labelled folder's {expected}")
        entry: dict[str, Any] = {"cfg_scale": record["sampler"]["cfg_scale"], "samples": len(labels)}
        for space in spaces:
            generated = extract_features(extractors[space.name], uint8_batches(pixels, params.batch_size))
            if settings.reference == "train":
                reference = {"features": cached_features(space, root, "train", pixels.shape[1], params.batch_size,
                                                         settings.reference_max_images, params.cache_dir,
                                                         params.num_workers, device)}
                described = f"{root}/train (center_crop_arr to {pixels.shape[1]} px)"
            else:
                reference = adm_reference_batch(settings.reference, space, params.batch_size, device)
                described = settings.reference
            count = len(reference["features"][space.fid_layer]) if "features" in reference else "ADM's mu/sigma"
            entry.update(fidelity_metrics(generated, reference, space, prefix="g",
                                          noise_splits=settings.fid_noise_splits if name == "unguided" else 0))
            entry.setdefault("protocol", {})[space.name] = {
                **space.describe(), "generated_images": len(labels), "reference_images": count,
                "reference": described, "sampler": record["sampler"], "dit_step": record.get("dit_step"),
                "precision_recall_k": 3}
        logits = extract_features(classifier, uint8_batches(pixels, params.batch_size))["logits"]
        entry.update(class_accuracy(logits, torch.from_numpy(labels), classes))
        report[name] = entry
    rows, record = samples_per_class(dit_samples, settings.grid_per_class)
    grid = plot_image_grid(rows, title=f"samples per class (cfg {record['sampler']['cfg_scale']}, gen_class_acc "
                                       f"{report['guided']['gen_class_acc']:.3f})")
    return report, grid


def report_evaluation(reconstruction: dict[str, Any], understanding: dict[str, Any], generation: dict[str, Any],
                      reference_classifier: Path, tokenizer_training_log: list[dict[str, Any]],
                      decoder_gan_training_log: list[dict[str, Any]], dit_training_log: list[dict[str, Any]],
                      ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str, str, Figure]:
    """metrics.json (the numbers, nested by family), protocol.json (how each was measured, settings,
    counts, breakdowns, the environment: ``split_report``), the MLflow metrics, the Markdown summary,
    the plain-text headline table (which the run prints at its end) and every stage's losses."""
    classifier = read_reference_record(reference_classifier)
    report = {"reconstruction": reconstruction, "understanding": understanding,
               "generation": {**generation, "reference_classifier": {
                   key: classifier[key] for key in ("val_top1", "train_top1", "chance", "train_images", "val_images")}},
               "environment": {"torch": torch.__version__, "python": platform.python_version()}}
    curves = plot_stage_curves({
        "tokenizer pre-training": (tokenizer_training_log, ("loss", "rec", "clip", "dino", "ibot")),
        "decoder GAN": (decoder_gan_training_log, ("loss", "rec", "g_adv", "d_loss")),
        "LightningDiT": (dit_training_log, ("loss", "mse", "cosine")),
    }, title="every stage's training losses")
    metrics, protocol = split_report(report)
    return (metrics, protocol, flat_metrics(report), summary_markdown(report, PAPER_REFERENCE), headline_table(report),
            curves)
