"""The evaluation nodes' checks that run before any work."""

from __future__ import annotations

import pytest

from vtp_kedro.pipelines.evaluation.nodes import EvaluationParams, fit_reference_classifier
from vtp_kedro.vtp.metrics.fidelity import INCEPTION_WEIGHTS
from vtp_kedro.vtp.weights import WeightsNotFoundError


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
