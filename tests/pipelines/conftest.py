"""Fixtures that run the real Kedro project (its CLI) in a temporary copy of itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def copy_project(destination: Path) -> Path:
    """The project's tracked layout (code, conf, dvc files, empty data folders) without any data."""
    names = ["pyproject.toml", "src", "conf", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore"]
    destination.mkdir(parents=True)
    for name in names:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache", "local"),
            )
        else:
            shutil.copy2(source, destination / name)
    (destination / "conf" / "local").mkdir(exist_ok=True)
    for layer in ("01_raw", "03_primary", "08_reporting"):
        (destination / "data" / layer).mkdir(parents=True, exist_ok=True)
    return destination


def project_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KEDRO_ENV"))}
    env.update(
        KEDRO_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
    )
    env.update(extra)
    return env


def kedro(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "kedro"), *args], cwd=project, env=project_env(),
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kedro {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def run_folders(folder: Path) -> list[Path]:
    """A runs_dir's run folders (hidden files, such as the content-digest cache, are not runs)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def filtered_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git-committed copy of the project after data_generation and data_filtering (--env ci)."""
    project = copy_project(tmp_path_factory.mktemp("run") / "project")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=project, check=True, env=project_env())
    kedro(project, "run", "--env", "ci", "--pipeline", "data_generation")
    kedro(project, "run", "--env", "ci", "--pipeline", "data_filtering")
    return project
