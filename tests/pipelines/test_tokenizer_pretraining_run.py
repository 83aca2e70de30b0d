"""`kedro run --pipeline tokenizer_pretraining --env ci` on a copy of the project with filtered data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro, run_folders
from vtp_kedro.datasets import CheckpointDataset
from vtp_kedro.pipelines.tokenizer_pretraining.nodes import split_probe_records
from vtp_kedro.vtp import load_tokenizer
from vtp_kedro.vtp.data.preprocess import normalize
from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPConfig, VTPModel

pytestmark = pytest.mark.slow
TERMS = ("loss", "rec", "l1", "perceptual", "clip", "ssl", "dino", "ibot", "koleo", "teacher_cls_entropy",
         "lr", "grad_norm", "samples_per_s", "flops")


@pytest.fixture(scope="module")
def pretrained(filtered_project: Path) -> Path:
    kedro(filtered_project, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining")
    return filtered_project


def test_checkpoint_loads_into_the_model(pretrained: Path) -> None:
    checkpoint = CheckpointDataset(str(pretrained / "data/06_models/tokenizer")).load()
    assert checkpoint["step"] == 6
    config = VTPConfig.model_validate(checkpoint["config"]["task"]["model"])
    model = VTPModel(config)
    model.load_state_dict(checkpoint["model"])
    latent = model.tokenizer.encode(torch.zeros(2, 3, 32, 32))
    grid = 32 // config.tokenizer.encoder.patch_size
    assert latent.shape == (2, config.tokenizer.latent_dim, grid, grid)
    # The slim inference folder holds the same tokenizer; load_tokenizer opens both folders.
    for folder in ("data/06_models/pretrained_tokenizer", "data/06_models/tokenizer"):
        tokenizer = load_tokenizer(pretrained / folder)
        assert torch.equal(tokenizer.encode(torch.full((2, 3, 32, 32), 0.5)),
                           model.eval().tokenizer.encode(normalize(torch.full((2, 3, 32, 32), 0.5))))
    assert [r["step"] for r in checkpoint["metrics"]] == [2, 4, 6]
    log = json.loads((pretrained / "data/08_reporting/tokenizer_pretraining/training_log.json").read_text())
    probe_log = json.loads((pretrained / "data/08_reporting/tokenizer_pretraining/probe_log.json").read_text())
    assert (log, probe_log) == split_probe_records(checkpoint["metrics"])
    # dvc plots reads each file as one table: every record has the same columns.
    for records in (log, probe_log):
        assert len({tuple(sorted(record)) for record in records}) <= 1
    png = pretrained / "data/08_reporting/tokenizer_pretraining/training_curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_mlflow_run_has_every_term(pretrained: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{pretrained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'tokenizer_pretraining'")
    for term in TERMS:
        history = client.get_metric_history(run.info.run_id, f"train/{term}")
        assert [m.step for m in history] == [2, 4, 6], term
    # no VGG16 weights here: 'auto' leaves LPIPS out, and every step records that (perceptual = 0)
    assert run.data.params["tokenizer_pretraining.model.reconstruction.perceptual_backbone"] == "auto"
    assert {m.value for m in client.get_metric_history(run.info.run_id, "train/perceptual")} == {0.0}
    assert "tokenizer_pretraining/training_curves.png" in {
        a.path for a in client.list_artifacts(run.info.run_id, "tokenizer_pretraining")
    }


def test_rerun_resumes_and_a_new_config_starts_a_new_run(pretrained: Path) -> None:
    runs = pretrained / "data/06_models/tokenizer_pretraining_runs"
    (first,) = run_folders(runs)
    before = CheckpointDataset(str(pretrained / "data/06_models/tokenizer")).load()["model"]
    kedro(pretrained, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining")
    assert list(run_folders(runs)) == [first]
    after = CheckpointDataset(str(pretrained / "data/06_models/tokenizer")).load()["model"]
    assert all(torch.equal(before[name], after[name]) for name in before)

    kedro(pretrained, "run", "--env", "ci", "--pipeline", "tokenizer_pretraining",
          "--params", "tokenizer_pretraining.trainer.optimizer.lr=0.002")
    assert len(list(run_folders(runs))) == 2
