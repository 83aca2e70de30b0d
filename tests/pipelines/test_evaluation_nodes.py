"""The evaluation nodes' checks that run before any work."""

from __future__ import annotations

import pytest

from vtp_kedro.pipelines.evaluation.nodes import EvaluationParams, fit_reference_classifier
from vtp_kedro.vtp.core.weights import WeightsNotFoundError
from vtp_kedro.vtp.metrics.fidelity import INCEPTION_WEIGHTS


def test_inception_without_its_weights_fails_at_the_first_node(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    params = EvaluationParams(feature_spaces=("inception", "reference"), weights_dir=str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError, match=INCEPTION_WEIGHTS):
        fit_reference_classifier(tmp_path / "no_tokenizer", tmp_path / "no_images", params)


def test_feature_spaces_are_validated_when_the_run_starts():
    with pytest.raises(ValueError, match="feature_spaces"):
        EvaluationParams(feature_spaces=("vgg16",))
    with pytest.raises(ValueError, match="feature_spaces"):
        EvaluationParams(feature_spaces=())


def test_without_guidance_configured_the_unguided_set_points_to_the_guided_one(tmp_path, monkeypatch):
    from vtp_kedro.datasets.folder import FolderDataset
    from vtp_kedro.pipelines.dit_training.nodes import DiTTrainingParams, sample_dit_unguided
    from vtp_kedro.pipelines.evaluation.nodes import _unguided_set

    monkeypatch.chdir(tmp_path)  # the node stages its folder in data/.staging of the project (here)

    params = DiTTrainingParams.model_validate({
        "runs_dir": str(tmp_path / "runs"), "model": {"preset": "tiny"}, "data": {"batch_size": 4},
        "trainer": {"budget": {"unit": "steps", "value": 1}}, "sampling": {"cfg_scale": 1.0}})
    unguided, guided = tmp_path / "unguided", tmp_path / "guided"
    staged = sample_dit_unguided({}, tmp_path / "tokenizer", tmp_path / "latents", params)  # no DiT needed
    FolderDataset(str(unguided)).save(staged)
    assert list(unguided.iterdir()) == [unguided / "sampling.json"]
    assert list((tmp_path / "data/.staging").iterdir()) == []  # moved, not copied
    assert _unguided_set(unguided, guided) == guided
    assert _unguided_set(guided, guided) == guided
