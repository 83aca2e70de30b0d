"""One setting for a user's labelled folder; settings of the chain that disagree are refused before any node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.conftest import kedro
from vtp_kedro.pipelines.chain import ChainSettingsError, chain_problems, validate_chain
from vtp_kedro.pipelines.evaluation.nodes import EvaluationParams, _root

CHAIN = {"latent_extraction", "dit_training", "evaluation"}


def labelled(root: Path, *classes: str) -> Path:
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        (root / "val" / name).mkdir(parents=True)
    return root


def test_the_evaluation_follows_the_folder_the_latents_came_from(tmp_path: Path) -> None:
    embedded, mine = Path("data/01_raw/labelled_images"), tmp_path / "digits"
    params = EvaluationParams()
    assert _root(embedded, params, {"image_root": None}) == embedded
    assert _root(embedded, params, {"image_root": str(mine)}) == mine  # one setting: latent_extraction's
    assert _root(embedded, params.model_copy(update={"image_root": "other"}), {"image_root": str(mine)}) == Path("other")


def test_agreeing_settings_pass(tmp_path: Path) -> None:
    mine = labelled(tmp_path / "digits", "0", "1")
    copy = labelled(tmp_path / "copy", "0", "1")
    for evaluation_root in (None, str(mine), str(copy)):  # null follows; the same classes elsewhere are fine
        parameters = {"latent_extraction": {"image_root": str(mine)}, "evaluation": {"image_root": evaluation_root}}
        assert chain_problems(parameters, CHAIN, tmp_path / "embedded") == []


def test_an_evaluation_folder_with_other_classes_is_refused_naming_both_settings(tmp_path: Path) -> None:
    mine, embedded = labelled(tmp_path / "digits", "0", "1"), labelled(tmp_path / "embedded", "circle", "star")
    parameters = {"latent_extraction": {"image_root": str(mine)}, "evaluation": {"image_root": str(embedded)}}
    (problem,) = chain_problems(parameters, CHAIN, embedded)
    assert "evaluation.image_root" in problem and "latent_extraction.image_root" in problem
    assert "['circle', 'star'] are not the latents' ['0', '1']" in problem and "image_root: null" in problem
    assert chain_problems(parameters, {"latent_extraction", "dit_training"}, embedded) == []  # not evaluated here
    with pytest.raises(ChainSettingsError, match="nothing has run"):
        validate_chain(parameters, CHAIN)


def test_samples_of_other_classes_and_a_foreign_tokenizer_are_refused(tmp_path: Path) -> None:
    embedded, samples = labelled(tmp_path / "embedded", "circle", "star"), tmp_path / "samples"
    samples.mkdir()
    (samples / "sampling.json").write_text(json.dumps({"classes": ["0", "1"]}))
    (problem,) = chain_problems({}, {"evaluation"}, embedded, dit_samples=samples)
    assert "samples" in problem and "['0', '1']" in problem
    assert chain_problems({}, {"dit_training", "evaluation"}, embedded, dit_samples=samples) == []  # resampled first
    parameters = {"latent_extraction": {"tokenizer": str(tmp_path / "mine")}}
    (problem,) = chain_problems(parameters, {"dit_training"}, embedded, gan_tokenizer=tmp_path / "gan_tokenizer")
    assert "latent_extraction.tokenizer" in problem and "decodes its samples" in problem


@pytest.mark.slow
def test_kedro_run_refuses_a_mismatch_before_the_first_node(project: Path, tmp_path: Path) -> None:
    """The issue's case: a folder of digits for the latents, evaluation.image_root left on another folder."""
    digits, other = labelled(tmp_path / "digits", "0", "1"), labelled(tmp_path / "shapes", "circle")
    result = kedro(project, "run", "--env", "ci", "--params",
                   f"latent_extraction.image_root={digits},evaluation.image_root={other}", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "evaluation.image_root" in output and "not the latents'" in output
    assert "Running node" not in output and not any((project / "data/01_raw").iterdir())
