"""Project hooks: every ``kedro run`` is one MLflow run, with one nested run per pipeline (stage)
it ran, that says exactly what ran and on which bytes; a run ends with one line of time per
pipeline; a pipeline run alone names the pipeline that makes a missing input; a run that
evaluates ends with its headline numbers; the catalog's configuration is a dataset that nodes
can read."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from pydantic import BaseModel

from vtp_kedro.vtp.core.io import is_url


@contextlib.contextmanager
def _without_predict_type_hint_advice() -> Iterator[None]:
    """Third-party warnings that tell a user of this project nothing, silenced where they arise:

    - MLflow 3 warns "Add type hints to the `predict` method to enable data validation ..." (in
      yellow, as a raw colour code in a log file) whenever a ``PythonModel`` subclass is defined
      without them. kedro-mlflow defines one (``KedroPipelineModel``) when it is imported, which
      this module does on every ``kedro`` command; the project logs no pyfunc model, so the advice
      has no one to act on it, yet it opened every command's output. MLflow raises it inside its
      own ``catch_warnings`` with a "once" filter in front, so ``warnings.filterwarnings`` cannot
      reach it: the one message is dropped from MLflow's warning helper while kedro-mlflow is
      imported, and every other warning passes.
    """
    try:
        from mlflow.pyfunc.utils import data_validation
    except ImportError:  # another MLflow layout: nothing to silence here
        yield
        return
    original = data_validation.color_warning

    def color_warning(*args: Any, **kwargs: Any) -> None:
        message = kwargs.get("message", args[0] if args else "")
        if "Add type hints to the `predict` method" not in str(message):
            original(*args, **kwargs)

    data_validation.color_warning = color_warning
    try:
        yield
    finally:
        data_validation.color_warning = original


with _without_predict_type_hint_advice():
    from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

DEFAULT_TRACKING_DB = "mlflow.db"
# MLflow 3's UI opens an experiment on its GenAI pages (Traces, with a pop-up) unless the experiment
# says it is model development; the value is the UI's ``CUSTOM_MODEL_DEVELOPMENT`` kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

log = logging.getLogger(__name__)


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


def node_stages(pipeline: Pipeline) -> dict[str, str | None]:
    """Each node of ``pipeline`` by name -> the project pipeline (the stage: ``tokenizer_pretraining``,
    ``evaluation``, ...) it belongs to; None for a node of no project pipeline."""
    owner = {node.name: name for name, stage in project_pipelines().items() for node in stage.nodes}
    return {node.name: owner.get(node.name) for node in pipeline.nodes}


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook with the project's additions.

    1. The tracking store defaults to a SQLite file in the project (MLflow 3 refuses the
       old ``./mlruns`` file store that kedro-mlflow falls back to); ``MLFLOW_TRACKING_URI``
       or ``server.mlflow_tracking_uri`` in ``mlflow.yml`` point it elsewhere. The experiment is
       tagged as model development (``mlflow.experimentKind``), which MLflow 3 UIs that read the
       tag take to open it on its runs table rather than its GenAI pages. (MLflow 3.17's UI lets
       its own GenAI / Model training switch decide instead: ``make mlflow-ui`` prints the
       runs table's address.)
    2. Parameters are logged as flattened keys also when Kedro has already validated them
       into typed config objects (kedro-mlflow only flattens plain dicts).
    3. The run is tagged with the git commit, whether the tree was dirty, the Kedro
       environment and the pipeline name.
    4. One MLflow run per stage. A ``kedro run`` of several project pipelines (``make run``:
       the whole chain) gets a nested run per pipeline under its own run, opened before the
       pipeline's first node; that stage's parameters, metrics (its trainer's ``train/*``
       curves), artifacts and tags (``kedro_pipeline`` = the stage) go to it, so no chart mixes
       two trainings. ``kedro run --pipeline X`` (one stage) is that stage's run itself.
       Kedro's sequential runner may run another stage's node between two of a stage's nodes: the
       stage's run is then ended and reopened. Under another runner (threads, processes) nodes
       run side by side and there is no one active stage: everything logs into the kedro run's
       own run, as with kedro-mlflow alone, and a warning says so.
    5. At the end it records what the run read and wrote: ``resolved_config.json`` (every
       pipeline's parameters as validated, defaults filled in) and ``data_digests.json`` (the
       sha256 of every file or folder input and output, DVC's own ``outs`` among them), each
       digest also a tag ``sha256.<dataset>``, so a number can be traced to exact bytes; each
       stage's run gets the same for its own parameters and datasets.
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
        self._reset_stages()
        super().after_context_created(context)

    def _reset_stages(self) -> None:
        self._stage_of: dict[str, str | None] = {}
        self._nest = False
        self._stage: str | None = None  # the stage whose nested run is active
        self._stage_runs: dict[str, str] = {}  # stage -> its nested run's id
        self._stage_resolved: dict[str, dict[str, Any]] = defaultdict(dict)
        self._stage_seconds: dict[str, float] = defaultdict(float)  # while its run was the active one
        self._entered = 0.0
        self._tags: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        super().before_pipeline_run(run_params, pipeline, catalog)
        self._reset_stages()
        if self._is_mlflow_enabled:
            names = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
            names = [n or "__default__" for n in names]
            self._tags = {**git_state(self._project_path), "kedro_env": self._env or "local"}
            mlflow.set_tags({**self._tags, "kedro_pipeline": "+".join(names)})
            experiment = mlflow.active_run().info.experiment_id
            if mlflow.get_experiment(experiment).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                mlflow.MlflowClient().set_experiment_tag(experiment, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            self._stage_of = node_stages(pipeline)
            stages = set(self._stage_of.values()) - {None}
            # nested runs unless the run is exactly one named stage (then its own run is the stage's)
            self._nest = not (len(stages) == 1 and stages == set(names))
            runner = str(run_params.get("runner"))
            if self._nest and not (runner == "None" or "SequentialRunner" in runner):
                log.warning("MLflow: one run for all stages (nested runs per stage need the sequential "
                            "runner, not %s): charts of different stages' trainings share keys", runner)
                self._nest = False

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any], is_async: bool
    ) -> None:
        inputs = {
            name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for name, value in inputs.items()
        }
        params = {name.removeprefix("params:"): value for name, value in inputs.items()
                  if name.startswith("params:")}
        self._resolved.update(params)
        if self._is_mlflow_enabled and self._nest:
            stage = self._stage_of.get(node.name)
            self._enter_stage(stage)
            if stage is not None:
                self._stage_resolved[stage].update(params)
        # kedro-mlflow re-opens the kedro run's run before every node, for runners that run nodes in
        # other threads. Where a run is active in this thread (the kedro run's or a stage's), that
        # would push the kedro run's run on top of the stage's: the stage's logging would land in it.
        run_id = self.run_id
        if mlflow.active_run() is not None:
            self.run_id = None
        try:
            super().before_node_run(node, catalog, inputs, is_async)  # logs the node's parameters
        finally:
            self.run_id = run_id

    def _enter_stage(self, stage: str | None) -> None:
        """Make ``stage``'s nested run the active one (None: the kedro run's own run)."""
        if stage == self._stage:
            return
        self._leave_stage()
        if stage is None:
            return
        if stage in self._stage_runs:  # back to a stage after another's node (nodes interleaved)
            mlflow.start_run(run_id=self._stage_runs[stage], nested=True)
        else:
            run = mlflow.start_run(run_name=stage, nested=True, parent_run_id=self.run_id,
                                   tags={**self._tags, "kedro_pipeline": stage})
            self._stage_runs[stage] = run.info.run_id
            log.info("MLflow run '%s' (%s) nested in '%s'", stage, run.info.run_id, self.run_id)
        self._stage, self._entered = stage, time.perf_counter()

    def _leave_stage(self, status: str = "FINISHED") -> None:
        if self._stage is not None:
            self._stage_seconds[self._stage] += time.perf_counter() - self._entered
            mlflow.end_run(status)
            self._stage = None

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        if self._is_mlflow_enabled:
            self._leave_stage()
            digests = data_digests(pipeline, catalog, self._project_path)
            mlflow.log_dict(self._resolved, "resolved_config.json")
            mlflow.log_dict(digests, "data_digests.json")
            mlflow.set_tags(digest_tags(digests))
            client = mlflow.MlflowClient()
            for stage, run_id in self._stage_runs.items():
                nodes = [node for node in pipeline.nodes if self._stage_of.get(node.name) == stage]
                stage_digests = data_digests(Pipeline(nodes), catalog, self._project_path)
                client.log_dict(run_id, self._stage_resolved[stage], "resolved_config.json")
                # Kedro may run another stage's nodes between two of this one's (the run is then
                # reopened), so the run's duration can be longer than the stage's own time
                client.log_metric(run_id, "stage_seconds", self._stage_seconds[stage])
                client.log_dict(run_id, stage_digests, "data_digests.json")
                for key, value in digest_tags(stage_digests).items():
                    client.set_tag(run_id, key, value)
        super().after_pipeline_run(run_params, pipeline, catalog)
        self._reset_stages()

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Pipeline,
                          catalog: CatalogProtocol) -> None:
        if self._is_mlflow_enabled:
            self._leave_stage("FAILED")
        super().on_pipeline_error(error, run_params, pipeline, catalog)
        self._reset_stages()


def digest_tags(digests: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``sha256.<dataset>`` tags from ``data_digests``' output."""
    return {f"sha256.{name}": entry["sha256"] for side in digests.values() for name, entry in side.items()}


class StageTimingHook:
    """A run ends with one log line of wall time per project pipeline (stage) it ran.

    Time between two hook events that name a node (its inputs' loads, the node, its outputs'
    saves) counts for the node's pipeline, so a stage's time includes its reading and writing.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        self._stage_of = node_stages(pipeline)
        self._seconds: dict[str, float] = defaultdict(float)
        self._start = self._last = time.perf_counter()

    def _tick(self, node: Node) -> None:
        now = time.perf_counter()
        self._seconds[self._stage_of.get(node.name) or "other nodes"] += now - self._last
        self._last = now

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._tick(node)

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._tick(node)

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        self._tick(node)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Node) -> None:
        self._tick(node)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        log.info("%s", stage_times_line(self._seconds, time.perf_counter() - self._start))


def format_seconds(seconds: float) -> str:
    """``4.2 s``, ``2 min 41 s``, ``3 h 05 min``."""
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def stage_times_line(seconds: dict[str, float], total: float) -> str:
    """``Time per pipeline: data_generation 1.2 s, tokenizer_pretraining 2 min 41 s, ...; total 11 min 3 s``,
    in the order the stages ran."""
    parts = ", ".join(f"{stage} {format_seconds(value)}" for stage, value in seconds.items())
    return f"Time per pipeline: {parts}; total {format_seconds(total)}"


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
    from vtp_kedro.vtp.core.io import DigestCache, folder_digest

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
