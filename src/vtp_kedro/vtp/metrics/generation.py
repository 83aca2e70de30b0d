"""How good and how class-faithful the DiT's samples are: gFID, IS, precision/recall, class accuracy.

Every number is measured in a named ``FeatureSpace`` (``metrics.fidelity``) against a reference:

- the labelled **train split**, preprocessed as latent extraction does (``center_crop_arr``);
  its features are computed once and cached (``cached_features``), keyed by the extractor's
  weights, the folder's file list and sizes, the image size and the image count;
- or an **ADM reference batch** (``VIRTUAL_imagenet256_labeled.npz``): its ``arr_0`` images
  are run through the extractor; with Inception its precomputed ``mu``/``sigma`` give the FID,
  exactly as ADM's evaluator does.

``gen_class_acc``: the reference classifier's top-1 on the samples against the class each was
drawn for, overall and per class, beside chance (always answering the most frequent label).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtp_kedro.vtp.core.io import atomic_path, fingerprint
from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder, cropped_batches
from vtp_kedro.vtp.metrics.fidelity import (
    FeatureSpace,
    extract_features,
    fid_split_half_noise,
    fid_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)

log = logging.getLogger(__name__)


def uint8_batches(pixels: np.ndarray, batch_size: int):
    """NHWC uint8 arrays (ADM's ``arr_0``) as NCHW uint8 tensor batches."""
    for first in range(0, len(pixels), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(pixels[first:first + batch_size])).permute(0, 3, 1, 2)


def cached_features(space: FeatureSpace, image_root: str | Path, split: str, image_size: int, batch_size: int,
                    max_images: int | None, cache_dir: str | Path, num_workers: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Features of a labelled split in ``space``, computed once per (extractor weights, files, size, count)."""
    folder = LabelledImageFolder(image_root, split)
    samples = folder.samples[:max_images]
    listing = hashlib.sha256()
    for path, label in samples:
        listing.update(f"{Path(path).relative_to(folder.split_dir)}\0{Path(path).stat().st_size}\0{label}\n".encode())
    identity = {"space": space.fingerprint(), "split": split, "image_size": image_size, "images": len(samples),
                "files": listing.hexdigest()}
    key = fingerprint(identity, 20)
    path = Path(cache_dir) / f"{space.name}_{split}_{key}.npz"
    if path.is_file():
        with np.load(path) as npz:
            return {layer: torch.from_numpy(npz[layer]) for layer in space.layers}
    log.info("computing %s features of %d %s images of %s (cached in %s)", space.name, len(samples), split,
             image_root, path)
    extractor = space.create(device)
    features = extract_features(extractor, (images for images, _ in cropped_batches(
        image_root, split, image_size, batch_size, max_images, num_workers)))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{layer: value.numpy() for layer, value in features.items()},
                     identity=json.dumps(identity))
    return features


def adm_reference_batch(path: str | Path, space: FeatureSpace, batch_size: int,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"features": {layer: ...}}`` of an ADM reference NPZ's ``arr_0`` images (if it has them), and
    ``{"stats": {"mu", "sigma"}}`` from its precomputed Inception statistics (Inception only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {path} does not exist")
    reference: dict[str, Any] = {}
    with np.load(path) as npz:
        if "arr_0" in npz:
            reference["features"] = extract_features(space.create(device), uint8_batches(npz["arr_0"], batch_size))
        if space.name == "inception" and {"mu", "sigma"} <= set(npz.files):
            reference["stats"] = {"mu": npz["mu"], "sigma": npz["sigma"]}
    if not reference:
        raise ValueError(f"{path} has neither arr_0 images nor (for Inception features) mu/sigma statistics")
    return reference


def fidelity_metrics(generated: dict[str, Tensor], reference: dict[str, Any], space: FeatureSpace,
                     prefix: str, noise_splits: int = 0) -> dict[str, float | None]:
    """``{prefix}fid``, ``is``, ``is_std``, ``precision``, ``recall`` (each with the space's suffix); with
    ``noise_splits`` > 0 also ``{prefix}fid{suffix}_noise``, the FID's own sampling noise
    (``fid_split_half_noise`` over that many splits, two FIDs each; None with fewer than 4 samples)."""
    suffix = space.suffix
    features = reference.get("features")
    stats = reference.get("stats") or fid_statistics(features[space.fid_layer])
    score, spread = inception_score(generated[space.isc_layer])
    result: dict[str, float | None] = {
        f"{prefix}fid{suffix}": frechet_distance(fid_statistics(generated[space.fid_layer]), stats),
        f"is{suffix}": score, f"is_std{suffix}": spread,
    }
    if noise_splits > 0:
        result[f"{prefix}fid{suffix}_noise"] = (fid_split_half_noise(generated[space.fid_layer], stats, noise_splits)
                                               if len(generated[space.fid_layer]) >= 4 else None)
    if features is None:  # mu/sigma only: precision/recall need the reference images' features
        result[f"precision{suffix}"] = result[f"recall{suffix}"] = None
    else:
        result[f"precision{suffix}"], result[f"recall{suffix}"] = precision_recall(
            generated[space.prc_layer], features[space.prc_layer])
    return result


def class_accuracy(logits: Tensor, labels: Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1 of the reference classifier against the intended labels, overall and per class."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    correct = logits.argmax(1) == labels
    per_class = {name: float(correct[labels == k].float().mean()) if bool((labels == k).any()) else None
                 for k, name in enumerate(classes)}
    return {"gen_class_acc": float(correct.float().mean()), "gen_class_acc_per_class": per_class,
            "chance": float(torch.bincount(labels, minlength=len(classes)).max()) / len(labels)}
