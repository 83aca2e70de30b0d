"""What a user sees around a run (fast): the log's lines, the time per pipeline, the warnings at
start-up, the Makefile's install and viz targets, what git keeps. The MLflow runs themselves:
``test_mlflow_stage_runs.py`` (slow)."""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node

from tests.pipelines.conftest import REPO
from vtp_kedro import hooks
from vtp_kedro.hooks import StageTimingHook, format_seconds, node_stages, stage_times_line


@pytest.fixture
def project_logging():
    """conf/logging.yml applied; the loggers' levels put back afterwards."""
    names = ["kedro", "kedro.io.data_catalog", "kedro.pipeline.node", "vtp_kedro", ""]
    saved = {name: logging.getLogger(name).level for name in names}
    config = yaml.safe_load((REPO / "conf/logging.yml").read_text())
    logging.config.dictConfig({**config, "handlers": {}, "root": {"level": "WARNING"}})
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_the_catalog_logs_no_line_per_dataset_but_its_warnings(project_logging, caplog) -> None:
    catalog = DataCatalog({"numbers": MemoryDataset()})
    catalog.save("numbers", [1, 2])
    catalog.load("numbers")
    logging.getLogger("kedro.io.data_catalog").warning("a catalog warning")
    logging.getLogger("kedro.pipeline.node").info("Running node: ...")
    assert [record.getMessage() for record in caplog.records] == ["a catalog warning", "Running node: ..."]


def test_the_logging_configs_silence_the_catalogs_lines() -> None:
    for name in ("logging.yml", "logging_rich.yml"):
        config = yaml.safe_load((REPO / "conf" / name).read_text())
        assert config["loggers"]["kedro.io.data_catalog"]["level"] == "WARNING", name
        assert config["loggers"]["kedro"]["level"] == "INFO"  # the node lines stay


def _identity(x):
    return x


def test_time_per_pipeline_line_in_the_order_the_stages_ran(monkeypatch) -> None:
    first = node(_identity, "a", "b", name="generate_captioned_shards")  # a data_generation node
    second = node(_identity, "b", "c", name="filter_captioned_shards")  # a data_filtering node
    stray = node(_identity, "c", "d", name="not_a_project_node")
    pipeline = Pipeline([first, second, stray])
    monkeypatch.setattr("kedro.framework.project.PACKAGE_NAME", "vtp_kedro")  # as in a kedro session
    assert node_stages(pipeline) == {"generate_captioned_shards": "data_generation",
                                      "filter_captioned_shards": "data_filtering", "not_a_project_node": None}
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 75.0, 76.0, 80.0])
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: next(clock))
    hook = StageTimingHook()
    hook.before_pipeline_run({}, pipeline, None)                   # 0
    hook.before_dataset_loaded("a", first)                        # 1: data_generation 1
    hook.before_node_run(first)                                   # 3: data_generation 3
    hook.after_dataset_saved("b", None, first)                    # 4: data_generation 4
    hook.before_node_run(second)                                  # 10: data_filtering 6
    hook.after_node_run(second)                                   # 75: data_filtering 71
    hook.after_node_run(stray)                                    # 76: other nodes 1
    assert dict(hook._seconds) == {"data_generation": 4.0, "data_filtering": 71.0, "other nodes": 1.0}
    assert stage_times_line(hook._seconds, 80.0) == \
        "Time per pipeline: data_generation 4.0 s, data_filtering 1 min 11 s, other nodes 1.0 s; total 1 min 20 s"
    assert [format_seconds(s) for s in (4.24, 59.96, 3599.6, 11_130)] == ["4.2 s", "1 min 00 s", "1 h 00 min",
                                                                          "3 h 05 min"]


def test_importing_the_hooks_raises_no_mlflow_type_hint_advice() -> None:
    # settings.py imports the hooks (and through them kedro-mlflow) on every kedro command
    result = subprocess.run([sys.executable, "-W", "always", "-c", "import vtp_kedro.hooks"],
                            capture_output=True, text=True, check=True)
    assert "Add type hints to the `predict` method" not in result.stderr
    assert "\x1b[" not in result.stderr  # no raw colour codes in a log


def test_setup_shows_pip_progress_and_viz_build_has_previews() -> None:
    makefile = (REPO / "Makefile").read_text()
    install = next(line for line in makefile.splitlines() if "pip install" in line)
    assert "--quiet" not in install and " -q" not in install
    assert "$(BIN)/kedro viz build --include-previews" in makefile
    assert "$(BIN)/kedro viz run" in makefile


def test_dvc_plots_output_is_not_kept_by_git() -> None:
    tracked = subprocess.run(["git", "ls-files", "dvc_plots"], cwd=REPO, capture_output=True, text=True, check=True)
    assert tracked.stdout == ""
    for path in ("dvc_plots/index.html", "dvc_plots/static/a.png"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, path
    assert Path(REPO / ".gitignore").read_text().count("dvc_plots/") == 1
