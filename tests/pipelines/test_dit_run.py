"""`kedro run --env ci` of latent_extraction, dit_training and evaluation after the tokenizer stages, on a copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.pipelines.conftest import REPO, copy_project, kedro, project_env
from vtp_kedro.vtp.metrics.report import merge_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dit_project(filtered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("dit") / "project"
    shutil.copytree(filtered_project, project, symlinks=True)
    for pipeline in ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training", "evaluation"):
        result = kedro(project, "run", "--env", "ci", "--pipeline", pipeline)
    (project / "evaluation_stdout.txt").write_text(result.stdout)
    return project


def test_the_evaluation_run_ends_with_the_report_and_the_headline_numbers(dit_project: Path) -> None:
    tail = (dit_project / "evaluation_stdout.txt").read_text().split("Evaluation report: ")[-1]
    assert tail.startswith("data/08_reporting/evaluation/summary.md")
    for row in ("PSNR post-GAN (dB)", "linear probe top-1", "zero-shot top-1", "gen_class_acc (cfg 2)"):
        assert row in tail
    assert "chance 10.0%" in tail


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


def _leaves(tree: dict) -> list:
    return [leaf for value in tree.values() for leaf in (_leaves(value) if isinstance(value, dict) else [value])]


def _report(project: Path) -> dict:
    """metrics.json and protocol.json of the evaluation, joined again."""
    folder = project / "data/08_reporting/evaluation"
    return merge_report(*(json.loads((folder / name).read_text()) for name in ("metrics.json", "protocol.json")))


def _keys(tree: object) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {key for value in tree.values() for key in _keys(value)}
    return set()


def test_evaluation_writes_every_family_the_summary_the_pictures_and_the_mlflow_run(dit_project: Path) -> None:
    report = dit_project / "data/08_reporting/evaluation"
    numbers = json.loads((report / "metrics.json").read_text())
    assert all(isinstance(value, (int, float)) for value in _leaves(numbers))  # a readable DVC metric
    metrics = merge_report(numbers, json.loads((report / "protocol.json").read_text()))
    assert {"reconstruction", "understanding", "generation"} <= set(metrics)
    for stage in ("pre_gan", "post_gan"):
        assert {"psnr", "ssim", "lpips", "rfid_ref", "class_acc_ref"} <= set(metrics["reconstruction"][stage])
    probe = metrics["understanding"]["linear_probe"]
    assert 0 <= probe["top1"] <= 1 and probe["chance"] == 0.1 and "pixel_baseline_top1" in probe
    assert metrics["understanding"]["zero_shot"]["templates"] == "generic"
    generation = metrics["generation"]
    assert generation["unguided"]["cfg_scale"] == 1.0 and generation["guided"]["cfg_scale"] == 2.0
    for entry in (generation["unguided"], generation["guided"]):
        assert {"gfid_ref", "is_ref", "precision_ref", "recall_ref", "gen_class_acc"} <= set(entry)
        protocol = entry["protocol"]["reference"]
        assert protocol["generated_images"] == 20 and protocol["reference_images"] == 40
        assert protocol["sampler"]["num_steps"] == 4 and protocol["extractor"] == "vtp-reference-classifier"
    assert not {"rfid", "gfid", "is", "precision", "recall"} & _keys(metrics)  # no Inception weights here
    summary = (report / "summary.md").read_text()
    assert "| understanding | linear probe top-1" in summary and "gFID unguided (reference)" in summary
    for picture in ("reconstructions", "samples_per_class", "linear_probe_confusion", "training_curves"):
        assert (report / f"{picture}.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri=f"sqlite:///{dit_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'evaluation'", max_results=1)
    assert "evaluation.understanding.linear_probe.top1" in run.data.metrics
    assert "evaluation.generation.guided.gen_class_acc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/protocol.json", "evaluation/summary.md",
            "evaluation/samples_per_class.png"} <= artifacts


def test_a_foreign_labelled_folder_runs_through_extraction_dit_and_evaluation(dit_project: Path,
                                                                               tmp_path_factory) -> None:
    project = tmp_path_factory.mktemp("foreign") / "project"
    shutil.copytree(dit_project, project, symlinks=True)
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    classes = ("apple", "violin", "zebra")
    for split, count in (("train", 8), ("val", 4)):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 200, (40, 48, 3), dtype=np.uint8)
                pixels[..., label] = 255
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    # one setting: the evaluation follows the folder the latents came from
    overrides = (f"latent_extraction.image_root={root},"
                 "dit_training.sampling.num_samples=12,dit_training.sampling.batch_size=6")
    for pipeline in ("latent_extraction", "dit_training", "evaluation"):
        kedro(project, "run", "--env", "ci", "--pipeline", pipeline, "--params", overrides)
    metrics = _report(project)
    assert set(metrics["generation"]["guided"]["gen_class_acc_per_class"]) == set(classes)
    assert metrics["understanding"]["linear_probe"]["val_images"] == 12
    assert metrics["reconstruction"]["post_gan"]["images"] == 12


def test_the_same_configuration_run_again_gives_identical_metrics_and_weights(
        dit_project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The chain from the same filtered data in a second clone: metrics.json and the weights files of
    every trained stage are byte-identical to the first run's (same CPU, same config). The inputs
    are the first run's own (other tests refilter the shared filtered project with other shards)."""
    project = copy_project(tmp_path_factory.mktemp("again") / "project")
    for inputs in ("data/01_raw", "data/03_primary"):
        shutil.rmtree(project / inputs)
        shutil.copytree(dit_project / inputs, project / inputs)
    for pipeline in ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training", "evaluation"):
        kedro(project, "run", "--env", "ci", "--pipeline", pipeline)
    for output in ("data/06_models/pretrained_tokenizer/tokenizer.safetensors",
                   "data/06_models/gan_tokenizer/tokenizer.safetensors", "data/06_models/dit/model.safetensors",
                   "data/08_reporting/evaluation/metrics.json"):
        assert (project / output).read_bytes() == (dit_project / output).read_bytes(), output


def test_the_example_notebook_runs_on_a_finished_ci_run(dit_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebooks = dit_project / "notebooks"
    notebooks.mkdir(exist_ok=True)
    shutil.copy2(REPO / "notebooks/vtp_run.ipynb", notebooks)
    notebook = nbformat.read(notebooks / "vtp_run.ipynb", as_version=4)
    for name, value in project_env(KEDRO_ENV="ci").items():
        monkeypatch.setenv(name, value)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(notebooks)}}).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert "linear probe top-1" in text and "no scaling study" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3  # reconstructions, latents, samples
