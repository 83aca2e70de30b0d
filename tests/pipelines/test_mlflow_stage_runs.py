"""A `kedro run` of several pipelines: one MLflow run per stage, nested in the run's own run.

The two smallest pipelines that train (tokenizer pre-training and the decoder GAN) both log their
trainer's curves as ``train/*``: in one run they would share every chart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro

pytestmark = pytest.mark.slow

STAGES = ("data_generation", "data_filtering", "tokenizer_pretraining", "decoder_gan")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from tests.pipelines.conftest import copy_project

    project = copy_project(tmp_path_factory.mktemp("stages") / "project")
    result = kedro(project, "run", "--env", "ci", "--pipelines", ",".join(STAGES))
    return project, result.stdout + result.stderr


def test_each_stage_is_its_own_run_nested_in_the_kedro_run(chain: tuple[Path, str]) -> None:
    project, _ = chain
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    # MLflow's UI opens such an experiment on its runs table, not on its GenAI pages
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert set(parent.data.tags["kedro_pipeline"].split("+")) == set(STAGES)
    children = {run.data.tags["kedro_pipeline"]: run for run in runs if run is not parent}
    assert sorted(children) == sorted(STAGES)
    for stage, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == stage and run.info.status == "FINISHED"
        assert run.data.tags["kedro_env"] == "ci"
        # the README's search finds the stage's run, and only it
        (found,) = client.search_runs([experiment.experiment_id], f"tags.kedro_pipeline = '{stage}'")
        assert found.info.run_id == run.info.run_id
        # its own parameters, and only its own
        assert run.data.params and all(key.startswith(f"{stage}.") for key in run.data.params), stage
        resolved = json.loads(Path(client.download_artifacts(run.info.run_id, "resolved_config.json")).read_text())
        assert list(resolved) == [stage]
    assert not parent.data.metrics  # every metric belongs to one stage

    # no metric key is logged by two trainings: within a run, every key's history has each step once,
    # in order (both trainers log train/loss, lr, ...: in one run their steps would repeat)
    for stage, run in children.items():
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == sorted(set(steps)), (stage, key, steps)
    tokenizer, gan = children["tokenizer_pretraining"], children["decoder_gan"]
    # the ci budgets: 6 steps and 4, logged every 2
    assert [m.step for m in client.get_metric_history(tokenizer.info.run_id, "train/loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(gan.info.run_id, "train/loss")] == [2, 4]
    assert "train/d_loss" in gan.data.metrics and "train/d_loss" not in tokenizer.data.metrics
    assert not any(key.startswith("train/") for key in children["data_filtering"].data.metrics)

    for stage, run in children.items():
        assert run.data.metrics["stage_seconds"] > 0, stage  # the stage's own time, beside its duration

    # each stage's artifacts and digests in its own run; report_filtering runs after the tokenizer's
    # training (Kedro's order), in data_filtering's reopened run
    assert "data_filtering/filter_counts.json" in {
        a.path for a in client.list_artifacts(children["data_filtering"].info.run_id, "data_filtering")}
    assert "tokenizer_pretraining/training_curves.png" in {
        a.path for a in client.list_artifacts(tokenizer.info.run_id, "tokenizer_pretraining")}
    assert "decoder_gan/reconstructions.png" in {a.path for a in client.list_artifacts(gan.info.run_id, "decoder_gan")}
    assert "filtered_shards" in json.loads(
        Path(client.download_artifacts(children["data_filtering"].info.run_id, "data_digests.json")).read_text()
    )["outputs"]
    assert children["data_filtering"].data.tags["sha256.filtered_shards"] == parent.data.tags["sha256.filtered_shards"]


def test_the_log_is_quiet_and_ends_with_the_time_per_pipeline(chain: tuple[Path, str]) -> None:
    _, output = chain
    assert "Loading data from" not in output and "Saving data to" not in output
    assert "Add type hints to the `predict` method" not in output
    (timing,) = [line for line in output.splitlines() if "Time per pipeline:" in line]
    positions = [timing.index(f" {stage} ") for stage in STAGES]
    assert positions == sorted(positions) and "; total " in timing
