"""A folder of files (WebDataset shards, an ImageNet-style tree) as one catalog entry."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError

from vtp_kedro.vtp.io import atomic_path, is_url, project_relative

FolderWriter = Callable[[Path | str], Any]
STAGING_DIR = Path("data") / ".staging"  # under the project root, where Kedro runs: the data's own disk


@dataclass(frozen=True)
class StagedFolder:
    """A folder that a node has already filled, for ``FolderDataset.save`` to move into place."""

    path: Path


def write_now(writer: FolderWriter, name: str) -> StagedFolder:
    """Run ``writer`` now, in the node, into a fresh staging folder (``data/.staging/<name>.*``), so the
    node's time is its work's (kedro-viz and the run log time nodes, not dataset saves); a failed
    writer leaves nothing behind. ``FolderDataset.save`` renames the folder onto its path."""
    STAGING_DIR.mkdir(parents=True, exist_ok=True)
    # project-relative like every path a run records (mkdtemp returns an absolute path from Python 3.12 on)
    folder = Path(project_relative(tempfile.mkdtemp(prefix=f"{name}.", dir=STAGING_DIR)))
    try:
        writer(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StagedFolder(folder)


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to the (absent) ``target``; across file systems, copy then delete."""
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.copytree(source, target)
        shutil.rmtree(source)


class FolderDataset(AbstractDataset[FolderWriter | StagedFolder, Path | str]):
    """A local folder written atomically and loaded as its path, or a folder at an fsspec URL.

    ``save`` takes a folder that the node has filled (``StagedFolder``, from ``write_now``: the
    node does its work, and kedro-viz's node times are true), renamed onto ``path`` (the old
    folder replaced whole), or a *writer*: a function that fills the folder it is given. The dataset
    calls it with a temporary sibling of ``path`` and renames that onto ``path`` only when
    the writer returns, so a killed run never leaves a half-written folder that a later
    run (or ``dvc repro``) would take as done, and stale files of an earlier run vanish.
    Lazy writing (as kedro-datasets' ``PartitionedDataset`` does with callables) keeps
    large outputs streaming to disk instead of passing through memory.

    With ``atomic: false`` the writer fills the folder in place instead: for resumable
    outputs (latent shards) whose writer skips finished parts and writes each part atomically.

    A ``path`` that is an fsspec URL (``s3://bucket/filtered``) has no rename: the writer gets
    the URL itself and writes object by object (``filter_shards`` uploads each shard whole and
    its report last, the mark of a finished output); ``load`` returns the URL as a string.

    ``load`` returns the folder's path (relative to the project root, where Kedro runs, when it
    lies inside it: the paths that nodes record in their outputs are the same in every clone); readers (``expand_urls``, ``LabelledImageFolder``)
    turn it into samples. It does not require the folder to exist, so that a node may
    fall back to another source; the readers fail with a message naming the path.
    """

    def __init__(self, path: str, atomic: bool = True, metadata: dict[str, Any] | None = None) -> None:
        self._path: Path | str = path if is_url(path) else Path(path)
        self._atomic = atomic
        self.metadata = metadata

    def _load(self) -> Path | str:
        return project_relative(self._path)

    def _save(self, data: FolderWriter | StagedFolder) -> None:
        if isinstance(data, StagedFolder):
            self._save_staged(data.path)
            return
        if not callable(data):
            raise DatasetError(
                f"FolderDataset '{self._path}' saves a filled folder (StagedFolder) or a writer function "
                f"(Path -> None), got {type(data).__name__}"
            )
        if isinstance(self._path, str):
            data(self._path)
            return
        if not self._atomic:
            self._path.mkdir(parents=True, exist_ok=True)
            data(self._path)
            return
        with atomic_path(self._path) as tmp:
            tmp.mkdir(parents=True)
            data(tmp)

    def _save_staged(self, staged: Path) -> None:
        if isinstance(self._path, str):  # a URL: upload the files, then drop the local copy
            fs, path = fsspec.core.url_to_fs(self._path)
            fs.put(f"{staged}/", path, recursive=True)
            shutil.rmtree(staged)
            return
        with atomic_path(self._path) as tmp:
            _move(staged, tmp)

    def _exists(self) -> bool:
        if isinstance(self._path, str):
            fs, path = fsspec.core.url_to_fs(self._path)
            return fs.isdir(path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "atomic": self._atomic}
