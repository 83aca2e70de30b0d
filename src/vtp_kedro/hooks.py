"""Project hooks: every ``kedro run`` is one MLflow run that says exactly what ran."""

from __future__ import annotations

import os
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
    """

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            db = Path(context.project_path) / DEFAULT_TRACKING_DB
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
        self._project_path = Path(context.project_path)
        self._env = context.env
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
        super().before_node_run(node, catalog, inputs, is_async)
