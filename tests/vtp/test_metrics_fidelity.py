"""FID, IS and precision/recall in named feature spaces: the guarded Fréchet distance, the reference
classifier as a torch-fidelity extractor, Inception only through the weights resolver."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch_fidelity
from scipy import linalg
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from vtp_kedro.vtp.core.weights import WeightsNotFoundError
from vtp_kedro.vtp.data.imagefolder import LabelledSplit
from vtp_kedro.vtp.metrics import fidelity
from vtp_kedro.vtp.metrics.fidelity import (
    INCEPTION_WEIGHTS,
    FrechetDistanceError,
    extract_features,
    fid_statistics,
    frechet_distance,
    inception_space,
    reference_space,
)
from vtp_kedro.vtp.metrics.generation import class_accuracy, fidelity_metrics
from vtp_kedro.vtp.metrics.reconstruction import measure_reconstruction
from vtp_kedro.vtp.metrics.reference import (
    REFERENCE_EXTRACTOR,
    ReferenceClassifierConfig,
    load_reference_classifier,
    train_reference_classifier,
    write_reference_classifier,
)


def _scipy_fid(first: dict, second: dict) -> float:
    covmean = linalg.sqrtm(first["sigma"] @ second["sigma"]).real
    diff = first["mu"] - second["mu"]
    return float(diff @ diff + np.trace(first["sigma"] + second["sigma"] - 2 * covmean))


def test_frechet_distance_of_gaussians_matches_the_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    dim = 6
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.5, 3, dim), rng.uniform(0.5, 3, dim)
    first = {"mu": np.zeros(dim), "sigma": (q * a) @ q.T}
    second = {"mu": np.full(dim, 0.5), "sigma": (q * b) @ q.T}
    known = dim * 0.25 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(first, second) == pytest.approx(known, rel=1e-9)
    x, y = rng.standard_normal((300, 12)), rng.standard_normal((300, 12)) * 1.5 + 0.3  # non-commuting
    stats_x, stats_y = fid_statistics(torch.from_numpy(x)), fid_statistics(torch.from_numpy(y))
    assert frechet_distance(stats_x, stats_y) == pytest.approx(_scipy_fid(stats_x, stats_y), rel=1e-6)


def test_identical_sets_give_zero_and_a_shifted_set_more():
    features = torch.from_numpy(np.random.default_rng(1).standard_normal((200, 8)))
    stats = fid_statistics(features)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)
    small, large = (frechet_distance(stats, fid_statistics(features + shift)) for shift in (0.5, 2.0))
    assert small == pytest.approx(8 * 0.25, rel=1e-6) and large == pytest.approx(8 * 4.0, rel=1e-6)


def test_a_broken_matrix_square_root_raises_instead_of_reporting(monkeypatch):
    stats = fid_statistics(torch.randn(50, 4, dtype=torch.float64))
    real = fidelity.fid_statistics_to_metric
    monkeypatch.setattr(fidelity, "fid_statistics_to_metric",
                        lambda a, b, verbose: {k: v + 7.0 for k, v in real(a, b, verbose).items()})
    with pytest.raises(FrechetDistanceError, match="known answer"):
        frechet_distance(stats, stats)
    calls = []

    def wrong_only_on_real_data(a, b, verbose):
        calls.append(1)
        result = real(a, b, verbose)
        return result if len(calls) == 1 else {k: v + 7.0 for k, v in result.items()}

    monkeypatch.setattr(fidelity, "fid_statistics_to_metric", wrong_only_on_real_data)
    with pytest.raises(FrechetDistanceError, match="symmetric"):
        frechet_distance(stats, stats)


def _split(count: int, seed: int) -> LabelledSplit:
    """Three classes told apart by which colour channel is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    images = torch.randint(0, 120, (count, 3, 16, 16), generator=generator, dtype=torch.uint8)
    images[torch.arange(count), labels] += 120
    return LabelledSplit(images, labels, ("apple", "zebra", "violin"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    model, record = train_reference_classifier(_split(96, 0), _split(30, 1),
                                               ReferenceClassifierConfig(width=4, epochs=3, batch_size=16, lr=1e-2))
    write_reference_classifier(folder, model, record)
    return folder


def test_reference_classifier_is_saved_with_its_record_and_learns(classifier):
    model, record = load_reference_classifier(classifier)
    assert record["classes"] == ["apple", "zebra", "violin"] and record["image_size"] == 16
    assert record["val_top1"] > 0.9 and record["chance"] == pytest.approx(1 / 3)
    assert json.loads((classifier / "classifier.json").read_text())["width"] == 4


class _Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_the_reference_extractor_runs_through_torch_fidelity_and_agrees_with_ours(classifier):
    generated, real = _split(40, 2).images, _split(60, 3).images
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(generated), input2=_Images(real), cuda=False, fid=True, isc=True, prc=True, verbose=False,
        feature_extractor=REFERENCE_EXTRACTOR, feature_extractor_weights_path=str(classifier), save_cpu_ram=True,
        batch_size=16)
    space = reference_space(classifier)
    extractor = space.create()
    ours = fidelity_metrics(extract_features(extractor, [generated]), {"features": extract_features(extractor, [real])},
                            space, prefix="g")
    assert set(ours) == {"gfid_ref", "is_ref", "is_std_ref", "precision_ref", "recall_ref"}
    assert ours["gfid_ref"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4, abs=1e-6)
    assert ours["is_ref"] == pytest.approx(theirs["inception_score_mean"], rel=1e-4)
    assert ours["precision_ref"] == pytest.approx(theirs["precision"])
    assert ours["recall_ref"] == pytest.approx(theirs["recall"])


def test_reference_extractor_resizes_other_image_sizes(classifier):
    extractor = reference_space(classifier).create()
    features = extract_features(extractor, [_split(4, 4).images.repeat_interleave(2, -1).repeat_interleave(2, -2)])
    assert features["pool"].shape == (4, 16) and features["logits"].shape == (4, 3)


def test_class_accuracy_per_class_and_chance():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    result = class_accuracy(logits, torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
    assert result["gen_class_acc"] == 0.75 and result["gen_class_acc_per_class"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert result["chance"] == 0.5


def test_a_missing_inception_file_fails_naming_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsNotFoundError) as error:
        inception_space(str(tmp_path / "weights"))
    message = str(error.value)
    assert INCEPTION_WEIGHTS in message and str(tmp_path / "weights") in message and "torch-fidelity" in message


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """An Inception of the right shape with random weights (the real file cannot be fetched here)."""
    folder = tmp_path_factory.mktemp("weights")
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *args, **kwargs: None
    try:
        torch.save({}, folder / INCEPTION_WEIGHTS)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(folder / INCEPTION_WEIGHTS))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    torch.save(model.state_dict(), folder / INCEPTION_WEIGHTS)
    return folder


@pytest.mark.slow  # two Fréchet distances in 2048 dimensions, each checked: ~20 s
def test_rfid_and_gfid_names_come_only_from_inception_features(inception_weights, classifier, tokenizer):
    spaces = [inception_space(str(inception_weights)), reference_space(classifier)]
    batches = [(_split(6, 5).images.repeat_interleave(2, -1).repeat_interleave(2, -2), torch.arange(6) % 3)]
    report = measure_reconstruction({"post_gan": tokenizer}, batches, "random", spaces=spaces,
                                    classifier=spaces[1])
    assert {"rfid", "rfid_ref", "class_acc_ref", "psnr"} <= set(report["post_gan"])
    reference_only = measure_reconstruction({"post_gan": tokenizer}, batches, "random", spaces=spaces[1:])
    assert "rfid" not in reference_only["post_gan"] and "rfid_ref" in reference_only["post_gan"]
    extractor = spaces[0].create()
    images = _split(8, 6).images
    generated = extract_features(extractor, [images])
    assert generated["2048"].shape == (8, 2048) and generated["logits_unbiased"].shape == (8, 1008)
    metrics = fidelity_metrics(generated, {"features": extract_features(extractor, [_split(8, 7).images])},
                               spaces[0], prefix="g")
    assert set(metrics) == {"gfid", "is", "is_std", "precision", "recall"}
