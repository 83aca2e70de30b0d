"""`kedro run --env ci --pipeline scaling_study`: a 2 x 2 grid of whole downstream chains, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro

pytestmark = pytest.mark.slow

POINTS = "data/07_model_output/scaling_study"


@pytest.fixture(scope="module")
def study_project(filtered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("scaling") / "project"
    shutil.copytree(filtered_project, project, symlinks=True)
    kedro(project, "run", "--env", "ci", "--pipeline", "scaling_study")
    return project


def test_the_grid_gives_one_row_per_point_and_the_plots(study_project: Path) -> None:
    results = pd.read_csv(study_project / "data/08_reporting/scaling_study/results.csv")
    assert len(results) == 4 and (results["seed"] == 0).all()
    assert results["gfid_ref_noise"].notna().all()  # the gFID's own sampling noise, from split halves
    assert sorted(zip(results["objective"], results["budget_flops"])) == [
        ("ae", 3e10), ("ae", 6e10), ("vtp", 3e10), ("vtp", 6e10)]
    for column in ("psnr", "rfid_ref", "linear_probe", "gfid_ref", "gen_class_acc", "probe_knn", "chance"):
        assert results[column].notna().all(), column
    assert results["rfid"].isna().all() and results["gfid"].isna().all()  # no Inception weights here
    assert results.loc[results["objective"] == "ae", "zero_shot"].isna().all()  # no text tower to ask
    assert results.loc[results["objective"] == "vtp", "zero_shot"].notna().all()
    # each point spent its budget: at least the FLOPs, less than one step more
    assert (results["flops"] >= results["budget_flops"]).all()
    assert (results["flops"] - results["budget_flops"] < results["flops"] / results["steps"]).all()  # equal steps
    assert results.groupby("objective")["steps"].apply(lambda s: s.is_monotonic_increasing).all()
    report = study_project / "data/08_reporting/scaling_study"
    for name in ("reconstruction", "generation", "understanding", "generation_vs_understanding"):
        assert (report / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    summary = (report / "summary.md").read_text()
    assert "| vtp | 3e10 → 6e10 |" in summary and "## Verdict on the paper's claims" in summary
    verdict = json.loads((report / "verdict.json").read_text())
    assert [claim["claim"] for claim in verdict["claims"]] == ["a", "b", "c", "d"]


def test_every_point_has_its_own_folder_and_mlflow_run_tagged_with_its_coordinates(study_project: Path) -> None:
    results = pd.read_csv(study_project / "data/08_reporting/scaling_study/results.csv")
    for point in results["point"]:
        folder = study_project / POINTS / point / "seed0"  # conf/ci: one seed
        record = json.loads((folder / "point.json").read_text())
        assert record["seed"] == 0
        assert record["point"] == point and record["mlflow_run_id"] in set(results["mlflow_run_id"])
        assert (folder / "08_reporting/evaluation/metrics.json").is_file()
        assert (folder / "06_models/gan_tokenizer/tokenizer.safetensors").is_file()
        assert len(list((folder / "06_models/tokenizer_pretraining_runs").iterdir())) >= 1
    assert not (study_project / "data/06_models/tokenizer").exists()  # the default chain's outputs untouched
    client = MlflowClient(tracking_uri=f"sqlite:///{study_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    runs = client.search_runs([experiment.experiment_id], "tags.`scaling_study.objective` = 'vtp'")
    assert {run.data.tags["scaling_study.budget_flops"] for run in runs} == {"3e+10", "6e+10"}
    run = next(r for r in runs if r.info.run_id in set(results["mlflow_run_id"]))
    assert run.data.tags["mlflow.parentRunId"]  # nested in the study's run
    # each stage of the point is its own run nested in the point's: one training per train/* chart
    stages = {child.data.tags["kedro_pipeline"]: child for child in client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")}
    assert sorted(stages) == sorted(["tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training",
                                     "evaluation"])
    assert all(child.data.tags["scaling_study.point"] == run.data.tags["scaling_study.point"]
               for child in stages.values())
    for stage in ("tokenizer_pretraining", "decoder_gan", "dit_training"):
        steps = [m.step for m in client.get_metric_history(stages[stage].info.run_id, "train/loss")]
        assert steps and steps == sorted(set(steps)), (stage, steps)
    assert "evaluation.understanding.linear_probe.top1" in stages["evaluation"].data.metrics
    assert not any(key.startswith(("train/", "evaluation.")) for key in run.data.metrics)
    assert run.data.metrics["scaling_study.linear_probe"] == pytest.approx(
        float(results.set_index("mlflow_run_id").loc[run.info.run_id, "linear_probe"]))


def test_a_rerun_trains_nothing_and_an_interrupted_point_resumes(study_project: Path) -> None:
    results_csv = study_project / "data/08_reporting/scaling_study/results.csv"
    before = pd.read_csv(results_csv)
    records = sorted((study_project / POINTS).glob("*/seed0/point.json"))
    classifiers = sorted((study_project / POINTS / ".reference_classifiers").rglob("*.safetensors"))
    stamps = {path: path.stat().st_mtime_ns for path in records + classifiers}
    # One point loses its record, as if the study was killed after the point's training: it is
    # finished again from its own runs, resumed at their last step; the others are not touched.
    records[0].unlink()
    result = kedro(study_project, "run", "--env", "ci", "--pipeline", "scaling_study")
    log = result.stdout + result.stderr
    assert log.count("finished, not rerun") == 3
    assert "from step 0 " not in log and "resumed from" in log
    after = pd.read_csv(results_csv)
    pd.testing.assert_frame_equal(after.drop(columns="mlflow_run_id"), before.drop(columns="mlflow_run_id"))
    assert records[0].is_file()
    assert len(classifiers) == 1  # one reference classifier for the study, trained once
    for path in records[1:] + classifiers:
        assert path.stat().st_mtime_ns == stamps[path]
