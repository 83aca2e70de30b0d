"""Partitioned dedup (vtp_kedro.vtp.curation.dedup) gives the sequential rule's verdicts for any partitioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vtp_kedro.vtp.curation.copy_detection import is_copy
from vtp_kedro.vtp.curation.dedup import DedupLayout, deduplicate, pigeonhole_bands, write_partitions, write_thumbnails

CHECK = (40.0, 0.75)


def _sequential(candidate: np.ndarray, sha: list[bytes], phash: np.ndarray, threshold: int | None,
                thumbnails: np.ndarray | None = None):
    """The rule by brute force, in input order (with ``thumbnails``: hash-close pairs also pass the check)."""

    hashes = phash.reshape(len(phash), -1)  # [n, 1 + crop variants]

    def near(i: int, j: int) -> bool:
        # an own hash (column 0) of one within the threshold of any hash of the other
        distances = [(int(hashes[i, 0]) ^ int(h)).bit_count() for h in hashes[j]] + \
            [(int(h) ^ int(hashes[j, 0])).bit_count() for h in hashes[i]]
        if min(distances) > threshold:
            return False
        return thumbnails is None or bool(is_copy(thumbnails[i][None], thumbnails[j][None], *CHECK)[0])

    seen, admitted_indices = set(), []
    exact, admitted = np.zeros(len(sha), np.uint8), np.zeros(len(sha), np.uint8)
    for i in range(len(sha)):
        if not candidate[i]:
            continue
        if sha[i] in seen:
            exact[i] = 1
            continue
        seen.add(sha[i])
        if threshold is not None and any(near(i, j) for j in admitted_indices):
            continue
        admitted[i] = 1
        admitted_indices.append(i)
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


def _run(tmp_path: Path, candidate, sha, phash, threshold, partitions, shard_size, thumbnails=None):
    layout = DedupLayout(tmp_path / f"dedup_{partitions}_{shard_size}", partitions, threshold,
                         CHECK if thumbnails is not None else None)
    starts = list(range(0, len(sha), shard_size))
    for shard, offset in enumerate(starts):
        positions = np.flatnonzero(candidate[offset:offset + shard_size])
        if thumbnails is not None:
            write_thumbnails(layout, shard, thumbnails[offset:offset + shard_size])
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


def test_the_copy_check_decides_among_the_hash_candidates(tmp_path: Path) -> None:
    # near copies by hash: half are copies of the picture too (a little noise), half are other pictures
    candidate, sha, phash = _records(400, seed=1)
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (len(sha), 4, 4, 3)).astype(np.float32)
    thumbnails = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    for i in range(1, len(sha)):
        close = [j for j in range(i) if (int(phash[i]) ^ int(phash[j])).bit_count() <= 6]
        if close and rng.random() < 0.5:
            thumbnails[i] = thumbnails[close[0]] + rng.normal(0, 2, thumbnails[i].shape)
    thumbnails = np.clip(thumbnails, 0, 255).astype(np.uint8)
    hash_only = _sequential(candidate, sha, phash, 6)[1]
    expected_exact, expected_admitted = _sequential(candidate, sha, phash, 6, thumbnails)
    assert (expected_admitted > hash_only).sum() > 20  # the check keeps pictures the hash alone would drop
    assert (expected_admitted < 1).sum() - (hash_only < 1).sum() < 0
    for partitions, shard_size in ((1, 400), (5, 37)):
        exact, admitted = _run(tmp_path, candidate, sha, phash, 6, partitions, shard_size, thumbnails)
        np.testing.assert_array_equal(exact, expected_exact)
        np.testing.assert_array_equal(admitted, expected_admitted)


def test_crop_variants_meet_their_copies_and_nothing_else(tmp_path: Path) -> None:
    # each image has an own hash and 3 crop hashes; a "cropped copy" has an own hash near one of an
    # earlier image's crop hashes, and its own crop hashes are random
    rng = np.random.default_rng(2)
    n = 600
    phash = rng.integers(0, 2**63, (n, 4), dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    for i in range(1, n):
        if rng.random() < 0.3:
            j, k = int(rng.integers(0, i)), int(rng.integers(1, 4))
            flips = rng.choice(64, int(rng.integers(0, 6)), replace=False)
            phash[i, 0] = phash[j, k] ^ np.uint64(sum(1 << int(b) for b in flips))
    sha = [rng.bytes(32) for _ in range(n)]
    candidate = np.ones(n, np.uint8)
    expected_exact, expected_admitted = _sequential(candidate, sha, phash, 4)
    own_only = _sequential(candidate, sha, phash[:, 0], 4)[1]
    assert (own_only - expected_admitted).sum() > 100  # the copies only the crop hashes find
    for partitions, shard_size in ((1, 600), (7, 53)):
        exact, admitted = _run(tmp_path, candidate, sha, phash, 4, partitions, shard_size)
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
