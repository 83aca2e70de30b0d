"""A folder of files (WebDataset shards, an ImageNet-style tree) as one catalog entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError

from vtp_kedro.vtp.io import atomic_path, is_url

FolderWriter = Callable[[Path | str], Any]


class FolderDataset(AbstractDataset[FolderWriter, Path | str]):
    """A local folder written atomically and loaded as its path, or a folder at an fsspec URL.

    ``save`` takes a *writer*: a function that fills the folder it is given. The dataset
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

    ``load`` returns the folder's path; readers (``expand_urls``, ``LabelledImageFolder``)
    turn it into samples. It does not require the folder to exist, so that a node may
    fall back to another source; the readers fail with a message naming the path.
    """

    def __init__(self, path: str, atomic: bool = True, metadata: dict[str, Any] | None = None) -> None:
        self._path: Path | str = path if is_url(path) else Path(path)
        self._atomic = atomic
        self.metadata = metadata

    def _load(self) -> Path | str:
        return self._path

    def _save(self, data: FolderWriter) -> None:
        if not callable(data):
            raise DatasetError(
                f"FolderDataset '{self._path}' saves a writer function (Path -> None), "
                f"got {type(data).__name__}"
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

    def _exists(self) -> bool:
        if isinstance(self._path, str):
            fs, path = fsspec.core.url_to_fs(self._path)
            return fs.isdir(path)
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "atomic": self._atomic}
