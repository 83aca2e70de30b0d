"""`kedro run --pipeline decoder_gan --env ci` after tokenizer_pretraining, on a copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro, run_folders
from vtp_kedro.vtp import load_tokenizer
from vtp_kedro.vtp.data.imagefolder import cropped_batches

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gan_project(filtered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("gan") / "project"
    shutil.copytree(filtered_project, project, symlinks=True)  # its own copy: these tests retrain upstream
    # From the default ci data: other tests may have filtered other shards into the shared project.
    kedro(project, "run", "--env", "ci", "--pipeline", "data_filtering")
    kedro(project, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining")
    kedro(project, "run", "--env", "ci", "--pipeline", "decoder_gan")
    return project


def test_writes_a_loadable_tokenizer_with_the_same_encoder_and_its_reports(gan_project: Path) -> None:
    before = load_tokenizer(gan_project / "data/06_models/pretrained_tokenizer")
    after = load_tokenizer(gan_project / "data/06_models/gan_tokenizer")
    also = load_tokenizer(gan_project / "data/06_models/decoder_gan")  # the full checkpoint loads too
    images = next(cropped_batches(gan_project / "data/01_raw/labelled_images", "val", 32, 8))[0].float() / 255
    assert torch.equal(after.encode(images), before.encode(images))
    assert torch.equal(also.decode(after.encode(images)), after.decode(after.encode(images)))
    assert not torch.equal(after.decode(after.encode(images)), before.decode(before.encode(images)))
    reports = gan_project / "data/08_reporting/decoder_gan"
    numbers = json.loads((reports / "reconstruction_comparison.json").read_text())
    protocol = json.loads((reports / "comparison_protocol.json").read_text())
    for stage in ("pre_gan", "post_gan"):  # the metric holds numbers only; the count is protocol
        assert set(numbers[stage]) == {"psnr", "ssim", "lpips"} and protocol[stage]["images"] == 16
    assert "protocol" not in numbers and protocol["protocol"]["lpips_backbone"] == "random"
    assert protocol["protocol"]["images"] == "data/01_raw/labelled_images/val"  # project-relative
    for name in ("reconstructions.png", "training_curves.png"):
        assert (gan_project / "data/08_reporting/decoder_gan" / name).read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri=f"sqlite:///{gan_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'decoder_gan'")
    assert {"decoder_gan.post_gan.psnr", "train/d_loss", "train/generator/lr", "train/adaptive_weight"} <= \
        run.data.metrics.keys()
    assert "decoder_gan/reconstructions.png" in {a.path for a in client.list_artifacts(run.info.run_id, "decoder_gan")}


def test_runs_resume_on_identical_inputs_and_restart_when_the_tokenizer_changes(gan_project: Path) -> None:
    tokenizer_runs = gan_project / "data/06_models/tokenizer_pretraining_runs"
    gan_runs = gan_project / "data/06_models/decoder_gan_runs"
    (first_gan_run,) = run_folders(gan_runs)
    # the copied project may hold other tests' tokenizer runs: count this test's
    tokenizer_runs_before = set(run_folders(tokenizer_runs))
    # Regenerated, byte-identical data: the tokenizer run resumes (content, not mtimes, names a run).
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "data_generation")
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "data_filtering")
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining")
    assert set(run_folders(tokenizer_runs)) == tokenizer_runs_before
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "decoder_gan")
    assert list(run_folders(gan_runs)) == [first_gan_run]
    # A retrained tokenizer: a new decoder_gan run, not the old one resumed.
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining",
          "--params", "tokenizer_pretraining.trainer.seed=1")
    kedro(gan_project, "run", "--env", "ci", "--pipeline", "decoder_gan")
    assert len(list(run_folders(gan_runs))) == 2
