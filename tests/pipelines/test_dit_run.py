"""`kedro run --env ci` of latent_extraction and dit_training after the tokenizer stages, on a copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dit_project(filtered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("dit") / "project"
    shutil.copytree(filtered_project, project, symlinks=True)
    for pipeline in ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training"):
        kedro(project, "run", "--env", "ci", "--pipeline", pipeline)
    return project


def test_latents_stats_checkpoint_samples_and_grid(dit_project: Path) -> None:
    latents = dit_project / "data/05_model_input/latents"
    record = json.loads((latents / "classes.json").read_text())
    assert record["images"] == {"train": 40, "val": 20} and len(record["classes"]) == 10
    assert (latents / "stats.safetensors").is_file() and list((latents / "train").glob("shard_*.safetensors"))
    assert (dit_project / "data/06_models/dit/model.safetensors").is_file()
    samples = dit_project / "data/07_model_output/dit_samples"
    arrays = np.load(samples / "samples.npz")
    assert arrays["arr_0"].shape == (20, 32, 32, 3) and arrays["arr_0"].dtype == np.uint8
    assert np.bincount(arrays["labels"]).tolist() == [2] * 10
    settings = json.loads((samples / "sampling.json").read_text())
    assert settings["sampler"]["cfg_scale"] == 2.0 and settings["classes"] == record["classes"]
    assert len(list(samples.glob("*.png"))) == 20
    grid = dit_project / "data/08_reporting/dit_training/sample_grid.png"
    assert grid.read_bytes()[:4] == b"\x89PNG"


def test_mlflow_records_extraction_counts_and_timings_and_the_samples(dit_project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{dit_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    (extraction,) = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'latent_extraction'",
                                       max_results=1)
    metrics = extraction.data.metrics
    assert metrics["latent_extraction.train.images"] == 40 and metrics["latent_extraction.val.images"] == 20
    assert metrics["latent_extraction.train.seconds"] > 0 and metrics["latent_extraction.train.images_per_s"] > 0
    (dit,) = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'dit_training'")
    assert "train/loss" in dit.data.metrics
    assert "dit_training/sample_grid.png" in {a.path for a in client.list_artifacts(dit.info.run_id, "dit_training")}


def test_extraction_rerun_keeps_finished_shards(dit_project: Path) -> None:
    shard = dit_project / "data/05_model_input/latents/train/shard_00000.safetensors"
    before = shard.stat().st_mtime_ns
    kedro(dit_project, "run", "--env", "ci", "--pipeline", "latent_extraction")
    assert shard.stat().st_mtime_ns == before
