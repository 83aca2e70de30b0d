"""Partitioned dedup (vtp_kedro.vtp.data.dedup) gives the sequential rule's verdicts for any partitioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vtp_kedro.vtp.data.dedup import DedupLayout, deduplicate, pigeonhole_bands, write_partitions


def _sequential(candidate: np.ndarray, sha: list[bytes], phash: np.ndarray, threshold: int | None):
    """The rule by brute force, in input order."""
    seen, admitted_hashes = set(), []
    exact, admitted = np.zeros(len(sha), np.uint8), np.zeros(len(sha), np.uint8)
    for i in range(len(sha)):
        if not candidate[i]:
            continue
        if sha[i] in seen:
            exact[i] = 1
            continue
        seen.add(sha[i])
        if threshold is not None and any((int(phash[i]) ^ h).bit_count() <= threshold for h in admitted_hashes):
            continue
        admitted[i] = 1
        admitted_hashes.append(int(phash[i]))
    return exact, admitted


def _records(n: int, seed: int = 0):
    """Random hashes with planted exact duplicates, near duplicates (a few flipped bits) and chains."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    sha = [rng.bytes(32) for _ in range(n)]
    for i in range(1, n):
        kind = rng.random()
        j = int(rng.integers(0, i))
        if kind < 0.1:  # exact copy
            sha[i], phash[i] = sha[j], phash[j]
        elif kind < 0.35:  # near copy: flip 1..6 bits of an earlier hash (chains form from near copies)
            flips = rng.choice(64, int(rng.integers(1, 7)), replace=False)
            phash[i] = phash[j] ^ np.uint64(sum(1 << int(b) for b in flips))
    candidate = (rng.random(n) > 0.05).astype(np.uint8)
    return candidate, sha, phash


def _run(tmp_path: Path, candidate, sha, phash, threshold, partitions, shard_size):
    layout = DedupLayout(tmp_path / f"dedup_{partitions}_{shard_size}", partitions, threshold)
    starts = list(range(0, len(sha), shard_size))
    for shard, offset in enumerate(starts):
        positions = np.flatnonzero(candidate[offset:offset + shard_size])
        write_partitions(layout, shard, positions, sha[offset:offset + shard_size], phash[offset:offset + shard_size])
    offsets = np.array([*starts, len(sha)], dtype=np.int64)
    exact, admitted = deduplicate(layout, offsets, candidate, lambda task, items: [task(i) for i in items])
    return np.array(exact[: len(sha)]), np.array(admitted[: len(sha)])


@pytest.mark.parametrize("threshold", [None, 0, 4, 10])
def test_any_partitioning_gives_the_sequential_verdicts(tmp_path: Path, threshold: int | None) -> None:
    candidate, sha, phash = _records(1500)
    expected_exact, expected_admitted = _sequential(candidate, sha, phash, threshold)
    near = int((candidate - expected_exact - expected_admitted).sum())
    assert expected_exact.sum() > 50 and (near > 100 if threshold and threshold >= 4 else True)  # both kinds
    for partitions, shard_size in ((1, 1500), (3, 100), (16, 37)):
        exact, admitted = _run(tmp_path, candidate, sha, phash, threshold, partitions, shard_size)
        np.testing.assert_array_equal(exact, expected_exact)
        np.testing.assert_array_equal(admitted, expected_admitted)


def test_a_chain_keeps_its_ends_as_the_sequential_rule_does(tmp_path: Path) -> None:
    # a ~ b ~ c with a and c far apart: b goes (near a), c stays (its only earlier neighbour b is gone)
    a = 0
    b = a ^ 0b1111
    c = b ^ (0b1111 << 8)
    phash = np.array([a, b, c], dtype=np.uint64)
    sha = [b"a" * 32, b"b" * 32, b"c" * 32]
    _, admitted = _run(tmp_path, np.ones(3, np.uint8), sha, phash, 4, 2, 1)
    assert admitted.tolist() == [1, 0, 1]


def test_bands_cover_the_64_bits() -> None:
    for threshold in (0, 4, 10, 63):
        bands = pigeonhole_bands(threshold)
        assert len(bands) == threshold + 1
        covered = sum(mask << shift for shift, mask in bands)
        assert covered == 2**64 - 1
