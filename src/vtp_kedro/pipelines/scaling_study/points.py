"""One grid point's run with one seed: the project's own downstream pipelines on a catalog moved into the run's folder.

The run's catalog holds the project's dataset definitions (``catalog.yml`` as the session
resolved it, handed to the node by ``CatalogConfigHook``), with every output of the downstream
chain moved from ``data/<layer>/...`` to ``<points_dir>/<point>/seed<seed>/<layer>/...``; the shared inputs
(filtered shards, labelled images, the study's reference classifier) stay where they are. It runs
with Kedro's ``SequentialRunner``, so a point is judged by exactly the nodes and datasets the
default chain uses, and resumes like them: every training stage continues its run from the
run's runs folders, extraction skips finished shards. A finished run leaves ``point.json``
(its fingerprint, seed and MLflow run id) and is never run again while the fingerprint holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import DataCatalog
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from vtp_kedro.pipelines.decoder_gan.pipeline import create_pipeline as decoder_gan
from vtp_kedro.pipelines.dit_training.pipeline import create_pipeline as dit_training
from vtp_kedro.pipelines.evaluation.pipeline import create_pipeline as evaluation
from vtp_kedro.pipelines.latent_extraction.pipeline import create_pipeline as latent_extraction
from vtp_kedro.pipelines.tokenizer_pretraining.pipeline import create_pipeline as tokenizer_pretraining
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.io import atomic_path, fingerprint
from vtp_kedro.vtp.engine.checkpoint import TRAINER_STATE_FILE
from vtp_kedro.vtp.metrics.report import merge_report
from vtp_kedro.vtp.scaling import GridPoint, result_row

log = logging.getLogger(__name__)

DOWNSTREAM_STAGES = ("tokenizer_pretraining", "decoder_gan", "latent_extraction", "dit_training", "evaluation")
SHARED_INPUTS = ("filtered_shards", "raw_labelled_images")
STUDY_REFERENCE_CLASSIFIER = "scaling_study_reference_classifier"  # the study's catalog entry, shared by all points
POINT_RECORD = "point.json"
_PATH_KEYS = ("path", "filepath")


@dataclass(frozen=True)
class PlannedPoint:
    """A grid point run with one seed: every stage's parameters (the seeds derived from ``seed``),
    validated, and the pre-training samples it reads."""

    point: GridPoint
    params: Mapping[str, Config]
    data_samples: int | None
    seed: int = 0

    @staticmethod
    def run_path(point: GridPoint, seed: int) -> str:
        """The run's folder under the study's points_dir: ``<point>/seed<seed>``."""
        return f"{point.name}/seed{seed}"

    @property
    def path(self) -> str:
        return self.run_path(self.point, self.seed)

    @property
    def run_name(self) -> str:
        """The run's MLflow name, e.g. ``vtp_1.72e13flops_default_all_bottleneck_seed0``."""
        return f"{self.point.name}_seed{self.seed}"

    def fingerprint(self, input_digests: Mapping[str, str]) -> str:
        identity = {"point": self.point.coordinates(), "seed": self.seed, "inputs": dict(input_digests),
                    "params": {stage: params.model_dump(mode="json") for stage, params in self.params.items()}}
        return fingerprint(identity, 16)


def point_stages() -> dict[str, Pipeline]:
    """The default chain after data filtering by stage, in order, without the reference classifier's
    fit (one for the study)."""
    stages = dict(zip(DOWNSTREAM_STAGES, (tokenizer_pretraining(), decoder_gan(), latent_extraction(),
                                          dit_training(), evaluation())))
    return {name: Pipeline([node for node in stage.nodes if node.name != "fit_reference_classifier"])
            for name, stage in stages.items()}


def point_pipeline() -> Pipeline:
    """The default chain after data filtering, without the reference classifier's fit (one for the study)."""
    return sum(point_stages().values(), Pipeline([]))


def relocate(path: str, data_dir: Path, point_dir: Path) -> str:
    """``<data_dir>/<layer>/<rest>`` -> ``<point_dir>/<layer>/<rest>``."""
    resolved = Path(path)
    if not resolved.is_absolute() or not resolved.is_relative_to(data_dir):
        raise ValueError(f"{path} is not under {data_dir}: the scaling study gives each point its own copy of the "
                         "project's data folder, so the downstream outputs must live in it")
    return str(point_dir / resolved.relative_to(data_dir))


def _relocated(entry: Mapping[str, Any], data_dir: Path, point_dir: Path) -> dict[str, Any]:
    """A dataset's config with every path (also an MLflow wrapper's inner dataset's) moved into the point."""
    moved: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, Mapping):
            moved[key] = _relocated(value, data_dir, point_dir)
        elif key in _PATH_KEYS and isinstance(value, str):
            moved[key] = relocate(value, data_dir, point_dir)
        else:
            moved[key] = value
    return moved


def point_catalog(catalog_config: Mapping[str, Any], pipeline: Pipeline, point_dir: Path,
                  params: Mapping[str, Config], data_dir: Path) -> DataCatalog:
    """The project's datasets for ``pipeline``, its outputs moved into ``point_dir``, with the point's
    parameters; the shared inputs and the study's reference classifier are read where they are."""
    missing = [name for name in (*SHARED_INPUTS, STUDY_REFERENCE_CLASSIFIER) if name not in catalog_config]
    if missing:
        raise KeyError(f"the catalog defines no {missing}: the scaling study reads them")
    config = {name: _relocated(catalog_config[name], data_dir, point_dir)
              for name in sorted(pipeline.all_outputs()) if name in catalog_config}
    config |= {name: dict(catalog_config[name]) for name in SHARED_INPUTS}
    config["reference_classifier"] = dict(catalog_config[STUDY_REFERENCE_CLASSIFIER])
    catalog = DataCatalog.from_config(config)
    for stage, value in params.items():
        catalog[f"params:{stage}"] = value
    # where the pre-training checkpoint lives, to read its trainer state without loading the weights
    catalog["tokenizer_checkpoint_path"] = config["tokenizer_checkpoint"]["path"]
    return catalog


@contextlib.contextmanager
def point_mlflow_run(planned: PlannedPoint) -> Iterator[str | None]:
    """A nested MLflow run for the point's run with its seed under the study's run, tagged with its
    grid coordinates and seed; the stages inside it (their trainers, artifact and metric datasets)
    log into it. None without MLflow."""
    import mlflow

    if mlflow.active_run() is None:
        yield None
        return
    point = planned.point
    tags = {"scaling_study.point": point.name, "scaling_study.seed": str(planned.seed),
            **{f"scaling_study.{axis}": f"{value:g}" if isinstance(value, float) else str(value)
               for axis, value in point.coordinates().items()}}
    with mlflow.start_run(run_name=planned.run_name, nested=True, tags=tags) as run:
        mlflow.log_params({**{f"grid.{axis}": value for axis, value in point.coordinates().items()},
                           "grid.seed": planned.seed})
        mlflow.log_dict({stage: config.model_dump(mode="json") for stage, config in planned.params.items()},
                        "resolved_config.json")
        yield run.info.run_id


@contextlib.contextmanager
def stage_mlflow_run(stage: str, planned: PlannedPoint) -> Iterator[None]:
    """The stage's own MLflow run, nested in the point's (as ``kedro run`` nests a stage's run in its
    own), so each training's ``train/*`` curves have their own charts; tagged ``kedro_pipeline`` and
    ``scaling_study.point``. Nothing without an active run."""
    import mlflow

    if mlflow.active_run() is None:
        yield
        return
    with mlflow.start_run(run_name=stage, nested=True,
                          tags={"kedro_pipeline": stage, "scaling_study.point": planned.point.name,
                                "scaling_study.seed": str(planned.seed)}):
        yield


def read_point_record(point_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The finished point's record if it was made with this fingerprint, else None."""
    path = point_dir / POINT_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("fingerprint") == fingerprint else None


def point_row(planned: PlannedPoint, catalog: DataCatalog, mlflow_run_id: str | None) -> dict[str, Any]:
    """The point's results row, read from its own outputs (so a finished point's row follows the
    current table code): the evaluation's metrics, the online probe's log, the final trainer state."""
    checkpoint = Path(catalog.load("tokenizer_checkpoint_path"))
    trainer_state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    # metrics.json holds the numbers, protocol.json the settings beside them (a point finished before
    # the split has everything in metrics.json)
    protocol = catalog.load("evaluation_protocol") if catalog.exists("evaluation_protocol") else {}
    report = merge_report(catalog.load("evaluation_metrics"), protocol)
    return result_row(planned.point, report, catalog.load("tokenizer_probe_log"),
                      trainer_state, planned.data_samples, mlflow_run_id, planned.seed)


def run_point(planned: PlannedPoint, catalog: DataCatalog, point_dir: Path, fingerprint: str) -> str | None:
    """Run (or resume) the point's downstream chain and write ``point.json``; returns its MLflow run id."""
    with point_mlflow_run(planned) as run_id:
        for stage, pipeline in point_stages().items():  # each stage's inputs are on disk by then
            with stage_mlflow_run(stage, planned):
                SequentialRunner().run(pipeline, catalog)
        if run_id is not None:
            import mlflow

            row = point_row(planned, catalog, run_id)
            mlflow.log_metrics({f"scaling_study.{key}": float(value) for key, value in row.items()
                                if isinstance(value, (int, float)) and not isinstance(value, bool)})
    record = {"point": planned.point.name, "seed": planned.seed, "fingerprint": fingerprint,
              "coordinates": planned.point.coordinates(),
              "mlflow_run_id": run_id}
    with atomic_path(point_dir / POINT_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return run_id
