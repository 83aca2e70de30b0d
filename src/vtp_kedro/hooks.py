"""Project hooks: every ``kedro run`` is one MLflow run that says exactly what ran and on which bytes;
a pipeline run alone names the pipeline that makes a missing input; a run that evaluates ends
with its headline numbers; the catalog's configuration is a dataset that nodes can read."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from pydantic import BaseModel

from vtp_kedro.vtp.io import is_url

DEFAULT_TRACKING_DB = "mlflow.db"


def git_state(path: Path) -> dict[str, str]:
    """The commit checked out at ``path`` and whether the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    }


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook with the project's three additions.

    1. The tracking store defaults to a SQLite file in the project (MLflow 3 refuses the
       old ``./mlruns`` file store that kedro-mlflow falls back to); ``MLFLOW_TRACKING_URI``
       or ``server.mlflow_tracking_uri`` in ``mlflow.yml`` point it elsewhere.
    2. Parameters are logged as flattened keys also when Kedro has already validated them
       into typed config objects (kedro-mlflow only flattens plain dicts).
    3. The run is tagged with the git commit, whether the tree was dirty, the Kedro
       environment and the pipeline name.
    4. At the end it records what the run read and wrote: ``resolved_config.json`` (every
       pipeline's parameters as validated, defaults filled in) and ``data_digests.json`` (the
       sha256 of every file or folder input and output, DVC's own ``outs`` among them), each
       digest also a tag ``sha256.<dataset>``, so a number can be traced to exact bytes.
    """

    _resolved: dict[str, Any]

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            db = Path(context.project_path) / DEFAULT_TRACKING_DB
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
        self._project_path = Path(context.project_path)
        self._env = context.env
        self._resolved = {}
        super().after_context_created(context)

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        super().before_pipeline_run(run_params, pipeline, catalog)
        if self._is_mlflow_enabled:
            names = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
            mlflow.set_tags(
                {
                    **git_state(self._project_path),
                    "kedro_env": self._env or "local",
                    "kedro_pipeline": "+".join(n or "__default__" for n in names),
                }
            )

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any], is_async: bool
    ) -> None:
        inputs = {
            name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for name, value in inputs.items()
        }
        self._resolved.update({name.removeprefix("params:"): value for name, value in inputs.items()
                               if name.startswith("params:")})
        super().before_node_run(node, catalog, inputs, is_async)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        if self._is_mlflow_enabled:
            digests = data_digests(pipeline, catalog, self._project_path)
            mlflow.log_dict(self._resolved, "resolved_config.json")
            mlflow.log_dict(digests, "data_digests.json")
            mlflow.set_tags({f"sha256.{name}": entry["sha256"]
                             for side in digests.values() for name, entry in side.items()})
        super().after_pipeline_run(run_params, pipeline, catalog)


def dataset_path(catalog: CatalogProtocol, name: str) -> Path | None:
    """Where a catalog entry lives on disk (also inside an MLflow artifact wrapper); None for
    parameters and in-memory or metric-only datasets."""
    if name.startswith("params:") or name not in catalog:
        return None
    described = catalog.get(name)._describe()
    nested = described.get("dataset") if isinstance(described.get("dataset"), dict) else {}
    path = described.get("filepath") or described.get("path") or nested.get("filepath") or nested.get("path")
    # an fsspec URL (filtered shards on s3://) is not on this disk: not digested, not checked here
    return None if path is None or is_url(path) else Path(path)


def data_digests(pipeline: Pipeline, catalog: CatalogProtocol, project: Path) -> dict[str, dict[str, Any]]:
    """``{"inputs"|"outputs": {dataset: {"path", "sha256"}}}`` for the datasets kept on disk as files
    or folders (parameters, memory and MLflow metric datasets have no path and are skipped)."""
    from vtp_kedro.vtp.io import DigestCache, folder_digest

    cache = DigestCache(project / "data" / ".digest_cache.json")
    sides = {"inputs": sorted(pipeline.inputs()), "outputs": sorted(pipeline.all_outputs())}
    digests: dict[str, dict[str, Any]] = {side: {} for side in sides}
    for side, names in sides.items():
        for name in names:
            path = dataset_path(catalog, name)
            if path is None or not path.exists():
                continue
            try:
                digests[side][name] = {"path": os.path.relpath(path, project), "sha256": folder_digest(path, cache)}
            except ValueError:  # an empty folder has no content to digest
                continue
    cache.save()
    return digests


def project_pipelines() -> dict[str, Pipeline]:
    """Every pipeline of the project by name. Not Kedro's registry: during `kedro run --pipeline X`
    it holds only X, and the pipeline that makes X's missing input is another one."""
    from kedro.framework.project import PACKAGE_NAME

    package = importlib.import_module(f"{PACKAGE_NAME}.pipelines")
    return {name: importlib.import_module(f"{package.__name__}.{name}").create_pipeline()
            for _, name, is_package in sorted(pkgutil.iter_modules(package.__path__)) if is_package}


class MissingInputError(FileNotFoundError):
    """A pipeline's input has not been made: names the dataset, its path and the pipeline that makes it."""


def missing_input_message(dataset: str, catalog: CatalogProtocol) -> str:
    path = dataset_path(catalog, dataset)
    made_by = [name for name, made in project_pipelines().items() if dataset in made.all_outputs()]
    hint = f"run `kedro run --pipeline {made_by[0]}` first" if made_by else "no pipeline makes it: put it there"
    where = f" ({path})" if path is not None else ""
    return f"input {dataset!r}{where} does not exist: {hint}"


class MissingInputsHook:
    """Name the pipeline to run first when an input on disk has not been made.

    ``kedro run --pipeline decoder_gan`` on a fresh clone would otherwise fail inside a dataset
    or a reader with a bare path. Inputs that must exist fail before the first node. A
    ``FolderDataset`` input may legitimately be absent (a parameter can point the node at
    other data, e.g. ``tokenizer_pretraining.data.shards``), so for those the node's own
    error, which names the path, gets a note saying which pipeline makes the folder.
    """

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        for dataset in sorted(pipeline.inputs()):
            if self._may_be_absent(dataset, catalog) or catalog.exists(dataset):
                continue
            raise MissingInputError(missing_input_message(dataset, catalog))

    @hook_impl
    def on_node_error(self, error: Exception, node: Node, catalog: CatalogProtocol) -> None:
        for dataset in node.inputs:
            if self._may_be_absent(dataset, catalog) and not catalog.exists(dataset):
                error.add_note(missing_input_message(dataset, catalog))

    @staticmethod
    def _may_be_absent(dataset: str, catalog: CatalogProtocol) -> bool:
        if dataset.startswith("params:") or dataset == "parameters" or dataset not in catalog:
            return True
        from vtp_kedro.datasets.folder import FolderDataset

        return isinstance(catalog.get(dataset), FolderDataset)


class HeadlineHook:
    """A run that evaluated ends by printing where the report is and its headline numbers."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        if "evaluation_headline" not in pipeline.all_outputs():
            return
        report = os.path.relpath(dataset_path(catalog, "evaluation_summary"))
        print(f"\nEvaluation report: {report} (metrics.json and the plots beside it)\n"
              f"{catalog.load('evaluation_headline')}\n", flush=True)


CATALOG_CONFIG = "catalog_config"


class CatalogConfigHook:
    """The catalog's configuration as the run resolved it (the environment's, absolute paths) becomes
    the memory dataset ``catalog_config``.

    The scaling study builds one catalog per grid point from the project's own dataset definitions,
    moved into the point's folder. Kedro gives nodes no access to the catalog, and a node reading
    ``conf/`` itself would not know the run's ``--env``: this is the one way in.
    """

    @hook_impl
    def after_catalog_created(self, catalog: CatalogProtocol, conf_catalog: dict[str, Any]) -> None:
        catalog[CATALOG_CONFIG] = conf_catalog
