"""`kedro viz build`: the static site shows every pipeline with its parameters and datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.conftest import REPO, kedro

pytestmark = pytest.mark.slow


def test_kedro_viz_build_lists_every_pipeline_its_parameters_and_datasets(project: Path) -> None:
    kedro(project, "viz", "build")
    main = json.loads((project / "build/api/main").read_text())
    pipelines = sorted(p.name for p in (REPO / "src/vtp_kedro/pipelines").iterdir() if (p / "pipeline.py").is_file())
    assert sorted(p["id"] for p in main["pipelines"]) == sorted(["__default__", *pipelines])
    names = {node["name"] for node in main["nodes"]}
    assert {"filtered_shards", "pretrained_tokenizer", "latents", "evaluation_metrics"} <= names
    for name in pipelines:
        # each pipeline's own page shows its parameters (the scaling study is not in __default__)
        page = json.loads((project / "build/api/pipelines" / name).read_text())
        assert f"params:{name}" in {node["name"] for node in page["nodes"]}, name
