"""WebDataset tar shards of image-caption pairs, as img2dataset writes them for DataComp/LAION.

A sample is the group of consecutive tar members sharing a key (``<key>.jpg``,
``<key>.txt``, optional ``<key>.json``). Shards are written deterministically
(fixed mtime and owner) and atomically, so identical samples give identical bytes. They are
read from local paths or any fsspec URL, and a damaged shard is counted and skipped, never
fatal: a crawl of millions of images always holds a few broken files.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import braceexpand
import fsspec

from vtp_kedro.vtp.core.io import is_url, write_bytes

# webdataset's key convention (webdataset.tariterators.base_plus_ext): the key is the member
# path up to the first dot of its base name. Restated here because importing webdataset
# imports torch, ~1.5 s that every filtering worker would pay before reading a byte.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    match = _KEY_AND_EXTENSION.match(path)
    return (match.group(1), match.group(2)) if match else (None, None)

log = logging.getLogger(__name__)
# Members such as __index__ carry shard metadata, not samples (webdataset skips them too).
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: its file name, how many samples it holds and its sha256."""

    name: str
    samples: int
    sha256: str


# The tar layout of webdataset's TarWriter(encoder=False, mtime=0), which wrote every shard of this
# project before: members "<key>.<ext>" in sorted extension order, mode 0o444, owner "bigdata",
# mtime 0, tarfile's default (PAX) format in stream mode. Written here with tarfile itself because
# importing webdataset imports torch (~1.5 s), which every filtering worker would pay to write a tar.
_MEMBER_MODE, _MEMBER_OWNER = 0o444, "bigdata"


def write_shard(path: str | Path, samples: Iterable[Mapping[str, bytes | str]]) -> ShardInfo:
    """Write ``samples`` (dicts with ``__key__`` and extension -> bytes) to one tar, atomically;
    identical samples give identical bytes. ``path`` may be an fsspec URL (``vtp.core.io.write_bytes``)."""
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(sample):
                if ext.startswith("_"):
                    continue
                value = sample[ext]
                data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, _MEMBER_MODE
                info.uname = info.gname = _MEMBER_OWNER
                tar.addfile(info, io.BytesIO(data))
            count += 1
    data = buffer.getvalue()
    write_bytes(path, data)
    return ShardInfo(name=str(path).rstrip("/").rsplit("/", 1)[-1], samples=count,
                     sha256=hashlib.sha256(data).hexdigest())


def write_shards(
    output_dir: str | Path,
    samples: Iterable[Mapping[str, bytes | str]],
    samples_per_shard: int,
    prefix: str = "",
) -> list[ShardInfo]:
    """Split ``samples`` into shards named ``{prefix}{index:05d}.tar`` of ``samples_per_shard`` each."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    output_dir = Path(output_dir)
    infos: list[ShardInfo] = []
    batch: list[Mapping[str, bytes | str]] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            infos.append(write_shard(output_dir / f"{prefix}{len(infos):05d}.tar", batch))
            batch = []
    if batch:
        infos.append(write_shard(output_dir / f"{prefix}{len(infos):05d}.tar", batch))
    return infos


SHARD_MANIFEST = "filter_report.json"  # data_filtering's output lists each shard's samples and sha256
_GLOB_CHARS = re.compile(r"[*?\[]")
SHARD_ERROR_REASONS = ("unreadable_shard", "empty_shard", "truncated_shard", "corrupt_shard",
                       "unkeyed_member", "duplicate_member")
"""Names under which :func:`iter_shard_samples` counts what it had to skip."""


def expand_urls(pattern: str | Sequence[str]) -> list[str]:
    """Expand shard locations into a list of shard URLs, failing at once when any is missing.

    Each entry may be a local file, a directory (all its ``*.tar``, sorted), a glob (sorted),
    a brace pattern (``shards/{00000..00099}.tar``, kept in pattern order) or any fsspec URL
    (``s3://``, ``gs://``, ``file://``, ``memory://``) with braces or globs.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns:
        raise FileNotFoundError("no shard pattern given")
    urls: list[str] = []
    for entry in patterns:
        for item in braceexpand.braceexpand(entry):
            found = _expand_one(item)
            if not found:
                detail = "" if item == entry else f" (first missing: {item!r})"
                raise FileNotFoundError(f"shard pattern {entry!r} matches no shard{detail}")
            urls.extend(found)
    return urls


def shard_prefix(urls: Sequence[str], samples: int) -> tuple[list[str], int]:
    """The shortest prefix of ``urls`` that holds at least ``samples`` samples, and how many it holds.

    A data-size axis at shard granularity, as web-scale subsets are made (img2dataset shards of
    10k): counts come from data_filtering's manifest beside the shards where there is one, else
    by reading the shard. Fails when all the shards hold fewer than ``samples``.
    """
    manifests: dict[str, dict[str, int]] = {}
    prefix, held = [], 0
    for url in urls:
        if held >= samples:
            break
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in manifests:
            manifest = Path(folder) / SHARD_MANIFEST
            entries = json.loads(manifest.read_text()).get("shards", []) if manifest.is_file() else []
            manifests[folder] = {entry["name"]: int(entry["samples"]) for entry in entries}
        count = manifests[folder].get(name)
        held += count if count is not None else sum(1 for _ in iter_shard_samples(url))
        prefix.append(url)
    if held < samples:
        raise ValueError(f"a data size of {samples} samples: the {len(urls)} shards hold only {held}")
    return prefix, held


def _expand_one(item: str) -> list[str]:
    """The shards one brace-free location names: itself, its sorted glob matches or its ``*.tar``."""
    if not is_url(item):
        path = Path(item)
        if _GLOB_CHARS.search(item):
            return sorted(p for p in glob.glob(item) if Path(p).is_file())
        if path.is_dir():
            return sorted(str(p) for p in path.glob("*.tar") if p.is_file())
        return [item] if path.is_file() else []
    fs, fs_path = fsspec.core.url_to_fs(item)
    if _GLOB_CHARS.search(fs_path):
        matches = [p for p in fs.glob(fs_path) if fs.isfile(p)]
    elif fs.isdir(fs_path):
        matches = [p for p in fs.ls(fs_path, detail=False) if p.endswith(".tar") and fs.isfile(p)]
    else:
        return [item] if fs.isfile(fs_path) else []
    return sorted(fs.unstrip_protocol(p) for p in matches)


class _EndTrackingTarInfo(tarfile.TarInfo):
    """Records on the TarFile the header error that ended its member list.

    tarfile's stream reader stops silently, as if at a clean end, when the archive lacks its
    end-of-archive blocks, is cut inside a header or meets a garbage header; only the error
    it swallowed tells a complete shard from a damaged one.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.end_error = exc  # type: ignore[attr-defined]
            raise


def iter_shard_samples(url: str, errors: Counter | None = None) -> Iterator[dict]:
    """Stream the samples of one WebDataset tar shard, never raising on bad data.

    Consecutive members sharing a key (webdataset's convention: the member path up to the
    first dot of its basename) form a sample ``{"__key__", "__url__", "<ext>": bytes, ...}``
    with lower-cased extensions. What cannot be read is counted in ``errors`` under one of
    :data:`SHARD_ERROR_REASONS` and skipped: a shard that cannot be opened or is not a tar
    (``unreadable_shard``), a zero-byte shard or one without samples (``empty_shard``), a shard
    cut short (``truncated_shard``: the samples before the damage are yielded, the partial one
    is dropped) or with a garbage header inside (``corrupt_shard``), a member name without an
    extension (``unkeyed_member``), a repeated extension within a sample (``duplicate_member``,
    the first is kept).
    """
    # The tar loop is written here rather than taken from webdataset's tar_file_expander:
    # its handlers see only an exception, so they can neither tell which failure happened
    # nor drop the partial sample cut off by a truncated shard.
    errors = Counter() if errors is None else errors
    try:
        with fsspec.open(url, "rb") as stream:
            if not stream.read(1):
                errors["empty_shard"] += 1
                log.warning("empty shard (zero bytes): %s", url)
                return
            stream.seek(0)
            yield from _tar_samples(url, stream, errors)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        errors["unreadable_shard"] += 1
        log.warning("unreadable shard %s: %s", url, exc)


def _tar_samples(url: str, stream: IO[bytes], errors: Counter) -> Iterator[dict]:
    """Group the members of an opened tar stream into samples; see :func:`iter_shard_samples`."""
    tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndTrackingTarInfo)
    sample: dict | None = None
    yielded = 0
    try:
        for member in tar:
            if not member.isreg() or _META_MEMBER.match(member.name):
                continue
            key, ext = base_plus_ext(member.name)
            if key is None:
                errors["unkeyed_member"] += 1
                continue
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                    yielded += 1
                sample = {"__key__": key, "__url__": url}
            ext = ext.lower()
            if ext in sample:
                errors["duplicate_member"] += 1
                continue
            sample[ext] = tar.extractfile(member).read()
        end_error = getattr(tar, "end_error", None)
        damaged = end_error is not None and not isinstance(end_error, tarfile.EOFHeaderError)
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        damaged = True  # cut inside a member, a bad extended header, a broken compressed stream
    if damaged:
        # Whether the damage is the end of the file or lies before it is all that tells them apart.
        reason = "truncated_shard" if not stream.read(1) else "corrupt_shard"
        errors[reason] += 1
        log.warning("%s after %d complete samples, dropping the partial one: %s", reason, yielded, url)
        return
    if sample is not None:
        yield sample
    elif yielded == 0:
        errors["empty_shard"] += 1
        log.warning("shard holds no samples: %s", url)
