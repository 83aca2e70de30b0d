"""Atomic file output (a killed run never leaves a half-written file that a later run takes as done)
and content digests of files and folders (what a run read and wrote, by bytes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def is_url(path: str | os.PathLike) -> bool:
    """True for an fsspec URL (``s3://``, ``gs://``, ``file://``, ``memory://``), which is written
    through fsspec object by object; a plain path is local and renamed into place."""
    return "://" in str(path)


def project_relative(path: str | os.PathLike) -> Path | str:
    """``path`` relative to the working directory when it lies inside it, else as it is (a URL too).

    Kedro and DVC run in the project root and Kedro makes the catalog's paths absolute: what a run
    records (configs, protocols, sampling.json) names project files relative to the project, so the
    same run in two clones writes the same bytes (and DVC the same hashes)."""
    if is_url(path):
        return str(path)
    path, here = Path(path), Path.cwd()
    absolute = path if path.is_absolute() else here / path
    return absolute.relative_to(here) if absolute.is_relative_to(here) else path


def join(folder: str | os.PathLike, name: str) -> str | Path:
    """``folder/name`` for a local folder (a Path) or an fsspec URL (a string: Path would fold ``//``)."""
    return f"{str(folder).rstrip('/')}/{name}" if is_url(folder) else Path(folder) / name


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file whole: a local path through ``atomic_path``; an fsspec URL as one upload
    (``pipe_file``), which object stores make visible whole or not at all."""
    if is_url(path):
        import fsspec  # only for URLs: this module stays stdlib-only for local output

        fs, fs_path = fsspec.core.url_to_fs(str(path))
        fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(fs_path, data)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write to; rename it onto ``path`` only on success.

    The temporary name starts with ``.`` and ends with ``.tmp`` so that globs such as
    ``*.tar`` never pick it up. A file or a directory may be written there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """sha256 of local files, remembered by (path, size, mtime) so a rerun does not reread the data.

    Only a shortcut: a file whose size or mtime changed is hashed again, and regenerated
    byte-identical files hash to the same digest.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.entries: dict[str, list] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.entries = {}
        self._dirty = False

    def file(self, path: str | Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
        cached = self.entries.get(key)
        if cached is not None and cached[:2] == stamp:
            return cached[2]
        digest = file_sha256(path)
        self.entries[key] = [*stamp, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        if self.path is not None and self._dirty:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.entries, sort_keys=True))
            self._dirty = False


def fingerprint(identity: Any, length: int) -> str:
    """The first ``length`` hex digits of sha256 over ``identity`` as sorted-key JSON: the one name
    of a configuration's content (run folders, grid points, feature caches)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:length]


def folder_digest(folder: str | Path, cache: DigestCache | None = None) -> str:
    """sha256 over a folder's files (relative names and contents; hidden files skipped), or one file's."""
    folder, cache = Path(folder), cache or DigestCache()
    if folder.is_file():
        return cache.file(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"input folder {folder} holds no files")
    listing = [(str(p.relative_to(folder)), cache.file(p)) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
