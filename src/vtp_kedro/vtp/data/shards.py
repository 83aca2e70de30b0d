"""WebDataset tar shards of image-caption pairs, as img2dataset writes them for DataComp/LAION.

A sample is the group of consecutive tar members sharing a key (``<key>.jpg``,
``<key>.txt``, optional ``<key>.json``). Shards are written deterministically
(fixed mtime and owner) and atomically, so identical samples give identical bytes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from vtp_kedro.vtp.io import atomic_path


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: its file name, how many samples it holds and its sha256."""

    name: str
    samples: int
    sha256: str


def write_shard(path: str | Path, samples: Iterable[Mapping[str, bytes | str]]) -> ShardInfo:
    """Write ``samples`` (dicts with ``__key__`` and extension -> bytes) to one tar, atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    count = 0
    # encoder=False: members are written as the raw bytes given; mtime fixed so bytes are reproducible.
    with wds.TarWriter(buffer, encoder=False, mtime=0.0) as writer:
        for sample in samples:
            writer.write({k: v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v
                          for k, v in sample.items()})
            count += 1
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return ShardInfo(name=path.name, samples=count, sha256=hashlib.sha256(data).hexdigest())


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
