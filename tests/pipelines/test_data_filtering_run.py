"""`kedro run` of data_generation and data_filtering on a temporary copy of the project."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipelines.conftest import kedro
from vtp_kedro.vtp.core.io import folder_digest

pytestmark = pytest.mark.slow


def test_generation_writes_shards_and_labelled_folder(filtered_project: Path) -> None:
    shards = sorted((filtered_project / "data/01_raw/captioned_shards").glob("*.tar"))
    assert len(shards) == 4  # conf/ci: 256 samples, 64 per shard
    labelled = filtered_project / "data/01_raw/labelled_images"
    assert sorted(p.name for p in labelled.iterdir()) == ["train", "val"]
    assert len(list((labelled / "train").glob("*/*.JPEG"))) == 4 * 10


def test_filtering_outputs_and_report(filtered_project: Path) -> None:
    report_dir = filtered_project / "data/08_reporting/data_filtering"
    counts = json.loads((report_dir / "filter_counts.json").read_text())
    assert counts["total"] == 256
    assert counts["kept"] + sum(counts["dropped"].values()) == counts["total"]
    assert 0 < counts["kept"] < 256  # the embedded data carries planted web-data defects

    manifest = json.loads((report_dir / "shard_manifest.json").read_text())
    shard_dir = filtered_project / "data/03_primary/filtered_shards"
    assert [m["name"] for m in manifest] == sorted(p.name for p in shard_dir.glob("*.tar"))
    assert sum(m["samples"] for m in manifest) == counts["kept"]
    for entry in manifest:
        assert hashlib.sha256((shard_dir / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    for plot in ("resolution_histogram.png", "caption_length_histogram.png"):
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_run_records_params_tags_metrics_artifacts(filtered_project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{filtered_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vtp-kedro")
    runs = client.search_runs([experiment.experiment_id], "tags.kedro_pipeline = 'data_filtering'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["data_filtering.rules.min_side"] == "32"
    assert run.data.params["data_filtering.samples_per_shard"] == "64"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=filtered_project,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert run.data.tags["git_commit"] == commit
    assert run.data.tags["git_dirty"] == "false"
    assert run.data.tags["kedro_env"] == "ci"
    counts = json.loads((filtered_project / "data/08_reporting/data_filtering/filter_counts.json").read_text())
    assert run.data.metrics["data_filtering.kept"] == counts["kept"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data_filtering")}
    assert {
        "data_filtering/filter_counts.json",
        "data_filtering/shard_manifest.json",
        "data_filtering/resolution_histogram.png",
        "data_filtering/caption_length_histogram.png",
    } <= artifacts
    # What the run read and wrote, by content: the resolved parameters and the data's sha256.
    resolved = json.loads(Path(client.download_artifacts(run.info.run_id, "resolved_config.json")).read_text())
    assert resolved["data_filtering"]["rules"]["min_side"] == 32
    digests = json.loads(Path(client.download_artifacts(run.info.run_id, "data_digests.json")).read_text())
    assert digests["inputs"]["raw_captioned_shards"]["path"] == "data/01_raw/captioned_shards"
    assert digests["outputs"]["filtered_shards"]["sha256"] == run.data.tags["sha256.filtered_shards"]
    assert digests["outputs"]["filtered_shards"]["sha256"] == folder_digest(filtered_project / "data/03_primary/filtered_shards")


def test_input_shards_parameter_reads_other_shards(filtered_project: Path, tmp_path: Path) -> None:
    raw = filtered_project / "data/01_raw/captioned_shards"
    pattern = f"{raw}/{{00000..00001}}.tar"
    kedro(filtered_project, "run", "--env", "ci", "--pipeline", "data_filtering",
          "--params", f"data_filtering.input_shards={pattern}")
    counts = json.loads((filtered_project / "data/08_reporting/data_filtering/filter_counts.json").read_text())
    assert counts["total"] == 128


def test_missing_input_fails_at_once_naming_it(project: Path) -> None:
    result = kedro(project, "run", "--env", "ci", "--pipeline", "data_filtering",
                   "--params", "data_filtering.input_shards=/no/such/dir/{00000..00003}.tar", check=False)
    assert result.returncode != 0
    assert "/no/such/dir/" in result.stdout + result.stderr
    assert not (project / "data/03_primary/filtered_shards").exists()


def test_bad_parameter_fails_before_reading_data_naming_the_key(project: Path) -> None:
    # No data exists in this copy: a config error must come first, naming the key.
    result = kedro(project, "run", "--env", "ci", "--pipeline", "data_filtering",
                   "--params", "data_filtering.rules.min_side=-1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "data_filtering" in output and "rules.min_side" in output
    assert "captioned_shards" not in output

    result = kedro(project, "run", "--env", "ci", "--pipeline", "data_filtering",
                   "--params", "data_filtering.rules.min_sidee=3", check=False)
    assert result.returncode != 0
    assert "rules.min_sidee" in result.stdout + result.stderr


def test_a_piped_run_logs_one_plain_line_per_record(project: Path) -> None:
    """conf/logging.yml: no rich columns wrapped at 80 characters in a CI or scheduler log."""
    result = kedro(project, "run", "--env", "ci", "--pipeline", "data_generation")
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
    records = [line for line in result.stdout.splitlines() if record.match(line)]
    assert any(line.endswith("Running node: generate_captioned_shards: generate_captioned_shards("
                             "[params:data_generation]) -> [raw_captioned_shards]") for line in records)
    assert any("Pipeline execution completed successfully" in line for line in records)
    assert [line for line in result.stdout.splitlines() if line.strip() and not record.match(line)] == []


@pytest.mark.parametrize("pipeline, maker", [("decoder_gan", "tokenizer_pretraining"),
                                             ("dit_training", "latent_extraction"),
                                             ("evaluation", "decoder_gan")])
def test_a_pipeline_run_alone_names_the_pipeline_that_makes_its_missing_input(
        project: Path, pipeline: str, maker: str) -> None:
    result = kedro(project, "run", "--env", "ci", "--pipeline", pipeline, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"does not exist: run `kedro run --pipeline {maker}` first" in output


def test_the_filter_node_does_its_work_before_it_returns(filtered_project: Path, tmp_path: Path, monkeypatch) -> None:
    """The node returns a filled folder (kedro-viz's node time is the filter's, not a save's),
    staged under work_dir when one is set (a cluster's workers write there)."""
    from vtp_kedro.datasets.folder import StagedFolder
    from vtp_kedro.pipelines.data_filtering.nodes import DataFilteringParams, filter_captioned_shards
    from vtp_kedro.vtp.curation.filters import FilterRules

    monkeypatch.chdir(filtered_project)
    params = DataFilteringParams(samples_per_shard=64, num_workers=1, work_dir=str(tmp_path / "shared"),
                                 rules=FilterRules(near_dup_hamming=None))
    staged = filter_captioned_shards(Path("data/01_raw/captioned_shards"), params)
    assert isinstance(staged, StagedFolder) and staged.path.parent == tmp_path / "shared"
    assert (staged.path / "filter_report.json").is_file() and sorted(staged.path.glob("*.tar"))
