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

from vtp_kedro.vtp.core.io import atomic_path, is_url, project_relative

FolderWriter = Callable[[Path | str], Any]
STAGING_DIR = Path("data") / ".staging"  # under the project root, where Kedro runs: the data's own disk


@dataclass(frozen=True)
class StagedFolder:
    """A folder that a node has already filled, for ``FolderDataset.save`` to put in place: moved,
    or with ``keep`` hard-linked (no extra space) and left where it is, for the next run's writer
    to skip what it finished."""

    path: Path
    keep: bool = False


def write_now(writer: FolderWriter, name: str, *, resume: bool = False,
              staging_dir: str | Path | None = None) -> StagedFolder:
    """Run ``writer`` now, in the node, into a staging folder under ``staging_dir`` (default
    ``data/.staging``), so the node's time is its work's (kedro-viz and the run log time nodes, not
    dataset saves). ``FolderDataset.save`` then renames the folder onto its path.

    By default the folder is fresh (``<name>.<random>``) and a failed writer leaves nothing
    behind. With ``resume`` it is ``<name>`` itself and it stays, after a failure and after the
    save alike (the save hard-links its files into place), for the next run's writer to pick up: a
    writer that skips what it finished, as the latent extraction does, neither redoes a killed
    run's work nor a finished run's;
    a different ``staging_dir`` is for writers whose workers run on other machines (a shared
    file system)."""
    root = Path(staging_dir) if staging_dir is not None else STAGING_DIR
    root.mkdir(parents=True, exist_ok=True)
    if resume:
        folder = Path(project_relative(root / name))
        folder.mkdir(exist_ok=True)
        writer(folder)
        return StagedFolder(folder, keep=True)
    # project-relative like every path a run records (mkdtemp returns an absolute path from Python 3.12 on)
    folder = Path(project_relative(tempfile.mkdtemp(prefix=f"{name}.", dir=root)))
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


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (the same bytes, no extra space); a copy across file systems."""
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


class FolderDataset(AbstractDataset[StagedFolder, Path | str]):
    """A local folder, or a folder at an fsspec URL, that a node has filled and the save puts in place.

    Nodes do their work (``write_now``: kedro-viz's and the run log's node times are the work's)
    into a staging folder on the data's own disk and return it; ``save`` renames it onto ``path``,
    the old folder replaced whole, so a killed run never leaves a half-written folder that a later
    run (or ``dvc repro``) would take as done, and stale files of an earlier run vanish. A
    ``path`` that is an fsspec URL (``s3://bucket/filtered``) gets the staged files uploaded one by
    one, the folder's top-level files (a report, a record: the mark of a finished folder) last.

    ``load`` returns the folder's path (relative to the project root, where Kedro runs, when it
    lies inside it: the paths that nodes record in their outputs are the same in every clone), or
    the URL as a string; readers (``expand_urls``, ``LabelledImageFolder``) turn it into samples.
    It does not require the folder to exist, so that a node may fall back to another source; the
    readers fail with a message naming the path.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path: Path | str = path if is_url(path) else Path(path)
        self.metadata = metadata

    def _load(self) -> Path | str:
        return project_relative(self._path)

    def _save(self, data: StagedFolder) -> None:
        if not isinstance(data, StagedFolder):
            raise DatasetError(
                f"FolderDataset '{self._path}' saves a folder a node has filled (StagedFolder, from "
                f"vtp_kedro.datasets.folder.write_now), got {type(data).__name__}"
            )
        self._save_staged(data.path, data.keep)

    def _save_staged(self, staged: Path, keep: bool) -> None:
        if isinstance(self._path, str):  # a URL: upload the files, then drop the local copy
            fs, path = fsspec.core.url_to_fs(self._path)
            # Top-level files last: a writer's report or record (the filter's report, the latents'
            # extraction.json) is the mark of a finished folder, as when the writer uploads itself.
            files = sorted((f for f in staged.rglob("*") if f.is_file()),
                           key=lambda f: (f.parent == staged, f.relative_to(staged).as_posix()))
            for file in files:
                fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(staged).as_posix()}")
            if not keep:
                shutil.rmtree(staged)
            return
        with atomic_path(self._path) as tmp:
            if keep:
                shutil.copytree(staged, tmp, copy_function=_link_or_copy)
            else:
                _move(staged, tmp)

    def _exists(self) -> bool:
        if isinstance(self._path, str):
            fs, path = fsspec.core.url_to_fs(self._path)
            return fs.isdir(path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
