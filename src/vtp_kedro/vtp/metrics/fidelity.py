"""FID, Inception Score and precision/recall in a named feature space, through torch-fidelity.

    FID       = ||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^(1/2))       Heusel et al. 2017
    IS        = exp(E_x KL(p(y|x) || p(y))), mean and std over 10 splits          Salimans et al. 2016
    precision = share of generated features inside the k-NN ball of some real feature
    recall    = share of real features inside the k-NN ball of some generated one, k = 3
                                                                                   Kynkäänniemi et al. 2019

Two feature spaces (``FeatureSpace``), each a torch-fidelity feature extractor named explicitly
for every metric (torch-fidelity's default for precision/recall is VGG16, which would differ
from ADM's evaluator without saying so):

- ``inception``: ``inception-v3-compat`` (the TF Inception ADM's evaluator uses): pool3 (2048)
  for FID and precision/recall, unbiased logits for IS. Its weights file comes only from the
  weights resolver; a missing file is an error naming it and where to put it.
- ``reference``: the project's reference classifier (``metrics.reference``); the metrics are
  named with ``_ref`` so they are never mistaken for Inception numbers.

The statistics, IS and precision/recall are torch-fidelity's own functions
(``fid_features_to_statistics``, ``fid_statistics_to_metric``, ``isc_features_to_metric``,
``prc_features_to_metric``) applied to features extracted once per image set.
``frechet_distance`` guards torch-fidelity's matrix square root: every call first checks it on
a pair of Gaussians of the same dimension whose distance is known in closed form, then checks
the answer against an independent symmetric eigendecomposition; any disagreement raises
``FrechetDistanceError`` instead of reporting a wrong FID (a bad ``sqrtm`` has produced garbage
FIDs on some BLAS builds, LightningDiT issue 97).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.utils import create_feature_extractor

from vtp_kedro.vtp.core.weights import resolve_weights
from vtp_kedro.vtp.metrics.reference import REFERENCE_EXTRACTOR, WEIGHTS_FILE, read_reference_record

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
SpaceName = Literal["inception", "reference"]
PRC_NEIGHBORHOOD = 3


class FrechetDistanceError(ArithmeticError):
    """The matrix square root behind an FID failed its check; the number would be wrong."""


@dataclass(frozen=True)
class FeatureSpace:
    """A torch-fidelity feature extractor and the layer each metric reads."""

    name: SpaceName
    extractor: str  # torch-fidelity registry name
    weights: Path  # feature_extractor_weights_path: a file (Inception) or a folder (reference classifier)
    fid_layer: str
    isc_layer: str
    prc_layer: str

    @property
    def suffix(self) -> str:
        """Metric-name suffix: ``rfid``/``gfid`` only ever come from Inception features."""
        return "" if self.name == "inception" else "_ref"

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.fid_layer, self.isc_layer, self.prc_layer)))

    def create(self, device: str | torch.device = "cpu") -> FeatureExtractorBase:
        extractor = create_feature_extractor(self.extractor, list(self.layers), cuda=False, verbose=False,
                                             feature_extractor_weights_path=str(self.weights))
        return extractor.to(device)

    def fingerprint(self) -> str:
        """Extractor name + sha256 of its weights: what cached reference features are keyed by."""
        path = self.weights / WEIGHTS_FILE if self.weights.is_dir() else self.weights
        return f"{self.extractor}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"

    def describe(self) -> dict[str, str]:
        return {"extractor": self.extractor, "weights": str(self.weights), "fid_layer": self.fid_layer,
                "isc_layer": self.isc_layer, "prc_layer": self.prc_layer}


def inception_space(weights_dir: str | None = None) -> FeatureSpace:
    """torch-fidelity's ``inception-v3-compat``; raises ``WeightsNotFoundError`` (naming the file and
    the folders to put it in) when the weights are not on this machine."""
    return FeatureSpace("inception", "inception-v3-compat", resolve_weights(INCEPTION_WEIGHTS, weights_dir),
                        fid_layer="2048", isc_layer="logits_unbiased", prc_layer="2048")


def reference_space(folder: str | Path) -> FeatureSpace:
    read_reference_record(folder)  # fails early, naming the folder, if it is not a classifier
    return FeatureSpace("reference", REFERENCE_EXTRACTOR, Path(folder), fid_layer="pool", isc_layer="logits",
                        prc_layer="pool")


@torch.no_grad()
def extract_features(extractor: FeatureExtractorBase, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Run uint8 image batches (B, 3, H, W) through ``extractor``; every layer's features, float64, on CPU."""
    device = next(extractor.parameters()).device
    parts: dict[str, list[Tensor]] = {}
    for images in batches:
        if images.dtype != torch.uint8:
            raise TypeError(f"feature extractors read uint8 images; got {images.dtype}")
        for name, value in extractor.convert_features_tuple_to_dict(extractor(images.to(device))).items():
            parts.setdefault(name, []).append(value.double().cpu())
    if not parts:
        raise ValueError("no images to extract features from")
    return {name: torch.cat(values) for name, values in parts.items()}


# ---- Fréchet distance, guarded ----------------------------------------------------------------


def fid_statistics(features: Tensor) -> dict[str, np.ndarray]:
    """``{"mu", "sigma"}`` (float64) of (N, D) features: torch-fidelity's ``fid_features_to_statistics``."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need (N >= 2, D) features; got {tuple(features.shape)}")
    return fid_features_to_statistics(features.double().cpu())


def _known_pair(dim: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Two Gaussians with commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(dim)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    mu_1, mu_2 = rng.standard_normal(dim), rng.standard_normal(dim)
    first = {"mu": mu_1, "sigma": (q * a) @ q.T}
    second = {"mu": mu_2, "sigma": (q * b) @ q.T}
    return first, second, float(np.sum((mu_1 - mu_2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def _symmetric_frechet(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """The same distance through eigh: Tr((S_1 S_2)^(1/2)) = Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2))."""
    values, vectors = np.linalg.eigh(first["sigma"])
    root = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    inner = np.linalg.eigvalsh(root @ second["sigma"] @ root)
    diff = first["mu"] - second["mu"]
    return float(diff @ diff + np.trace(first["sigma"]) + np.trace(second["sigma"]) - 2 * np.sqrt(inner.clip(min=0)).sum())


def frechet_distance(first: dict[str, np.ndarray], second: dict[str, np.ndarray], rtol: float = 1e-4) -> float:
    """torch-fidelity's ``fid_statistics_to_metric`` of two ``{"mu", "sigma"}``, checked twice (module docstring)."""
    first = {k: np.asarray(first[k], dtype=np.float64) for k in ("mu", "sigma")}
    second = {k: np.asarray(second[k], dtype=np.float64) for k in ("mu", "sigma")}
    dim = first["mu"].shape[0]
    if first["sigma"].shape != (dim, dim) or second["mu"].shape != (dim,) or second["sigma"].shape != (dim, dim):
        raise ValueError(f"statistics do not match: mu {first['mu'].shape} / {second['mu'].shape}, "
                         f"sigma {first['sigma'].shape} / {second['sigma'].shape}")
    known_1, known_2, answer = _known_pair(dim)
    check = fid_statistics_to_metric(known_1, known_2, verbose=False)[KEY_METRIC_FID]
    if not abs(check - answer) <= rtol * max(1.0, answer):
        raise FrechetDistanceError(f"the matrix square root fails a known answer at dimension {dim}: "
                                   f"{check!r} instead of {answer!r}; this numpy/BLAS build gives wrong FIDs")
    fid = fid_statistics_to_metric(first, second, verbose=False)[KEY_METRIC_FID]
    independent = _symmetric_frechet(first, second)
    scale = max(1.0, float(np.trace(first["sigma"]) + np.trace(second["sigma"])))
    if not (np.isfinite(fid) and abs(fid - independent) <= rtol * scale and fid >= -rtol * scale):
        raise FrechetDistanceError(f"FID {fid!r} disagrees with the symmetric computation {independent!r} "
                                   f"(covariance trace {scale:.4g}); refusing to report it")
    return max(fid, 0.0)


def fid_split_half_noise(features: Tensor, reference: dict[str, np.ndarray], splits: int = 4,
                         seed: int = 0) -> float:
    """The standard deviation of one FID of these N samples (against ``reference``'s mu and sigma)
    from the sampling of the N samples alone, estimated by splitting them into halves.

    With the samples cut at random into halves A and B, FID_A and FID_B are independent draws of
    an FID of N/2 samples, so E[(FID_A - FID_B)^2] = 2 v(N/2). Away from FID = 0 the FID is a smooth
    function of the sample mean and covariance, so its variance falls as 1/N (delta method) and
    v(N) = v(N/2) / 2 = E[(FID_A - FID_B)^2] / 4. The estimate averages (FID_A - FID_B)^2 over
    ``splits`` random splits (drawn from ``seed``) and returns sqrt(mean / 4). The FID's 1/N bias is
    the same for both halves and cancels in the difference. Where the two distributions nearly
    coincide the variance falls as 1/N^2 instead and this overestimates the noise by up to sqrt 2
    (a conservative interval). Needs N >= 4 (two samples per half for a covariance).
    """
    if features.ndim != 2 or len(features) < 4:
        raise ValueError(f"need (N >= 4, D) features to split into halves; got {tuple(features.shape)}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1; got {splits}")
    generator = torch.Generator().manual_seed(seed)
    half = len(features) // 2
    squares = []
    for _ in range(splits):
        order = torch.randperm(len(features), generator=generator)
        first, second = (frechet_distance(fid_statistics(features[index]), reference)
                         for index in (order[:half], order[half:2 * half]))
        squares.append((first - second) ** 2)
    return float(np.sqrt(np.mean(squares) / 4))


# ---- the three generation metrics ----------------------------------------------------------


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of torch-fidelity's ``isc_features_to_metric`` (shuffled with its fixed seed)."""
    splits = max(1, min(splits, len(logits)))
    result = isc_features_to_metric(logits.double().cpu(), splits=splits)
    return result[KEY_METRIC_ISC_MEAN], result[KEY_METRIC_ISC_STD]


def precision_recall(generated: Tensor, real: Tensor, neighborhood: int = PRC_NEIGHBORHOOD) -> tuple[float, float]:
    """torch-fidelity's ``prc_features_to_metric`` (generated first, real second), k = ``neighborhood``."""
    if min(len(generated), len(real)) <= neighborhood:
        raise ValueError(f"precision/recall with k = {neighborhood} needs more than {neighborhood} images per side; "
                         f"got {len(generated)} generated and {len(real)} real")
    result = prc_features_to_metric(generated.float().cpu(), real.float().cpu(), prc_neighborhood=neighborhood,
                                    prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return result[KEY_METRIC_PRECISION], result[KEY_METRIC_RECALL]
