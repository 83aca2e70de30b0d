"""The labelled near-duplicate set and its precision and recall (vtp.curation.near_duplicates)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from vtp_kedro.vtp.curation.copy_detection import is_copy
from vtp_kedro.vtp.curation.filters import CopyCheck, _phash, _phashes
from vtp_kedro.vtp.curation.near_duplicates import TRANSFORMS, closest_distinct_pairs, evaluate, real_photographs
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, render_sample


def _originals(count: int = 6) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {f"o{i}": Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
            for i in range(count)}


def test_a_hash_blind_to_the_image_flags_every_pair() -> None:
    scores = evaluate(_originals(), lambda image: (0,), (0,))
    n = 6
    for score in scores.values():
        assert score.recall == 1.0 and score.flagged_negatives == (2 * n) * (2 * n - 1) // 2 - n
        assert score.precision == pytest.approx(n / ((2 * n) * (2 * n - 1) // 2))


def _pixels(image: Image.Image) -> int:
    return int.from_bytes(hashlib.sha256(image.convert("RGB").tobytes()).digest()[:8], "little")


def test_an_exact_hash_flags_only_the_identical_copy() -> None:
    transforms = {"identity": lambda image: image.copy(), "jpeg_q50": TRANSFORMS["jpeg_q50"]}
    scores = evaluate(_originals(), lambda image: (_pixels(image),), (0,), transforms)
    assert (scores["identity"].recall, scores["identity"].precision) == (1.0, 1.0)
    assert (scores["jpeg_q50"].recall, scores["jpeg_q50"].precision) == (0.0, 1.0)  # nothing flagged


def test_hash_kinds_combine_by_and() -> None:
    with pytest.raises(ValueError, match="2 thresholds for 1 hashes"):
        evaluate(_originals(), lambda image: (0,), (1, 2))
    # the blind kind alone flags every pair; beside an exact kind, only each original and its copy
    scores = evaluate(_originals(), lambda image: (0, _pixels(image)), (0, 0), {"identity": lambda image: image.copy()})
    assert (scores["identity"].flagged_positives, scores["identity"].flagged_negatives) == (6, 0)


def test_the_filters_phash_on_real_photographs() -> None:
    """The measured state of the default rule: every re-encoded, resized, brightened or contrasted
    copy of a photograph is caught and no distinct photograph is; crops of a few percent are not."""
    photos = real_photographs()
    assert len(photos) >= 15
    scores = evaluate(photos, lambda image: (_phash(image),), (4,))
    for name in ("jpeg_q50", "jpeg_q75", "resize_0.5x", "resize_1.5x", "brightness_+10pct", "brightness_-10pct",
                 "contrast_+10pct", "contrast_-10pct"):
        assert (scores[name].recall, scores[name].precision) == (1.0, 1.0), name
    assert scores["crop_4pct_sides"].recall < 0.5
    ((distance, _, _),) = closest_distinct_pairs(photos, lambda image: (_phash(image),), count=1)
    assert max(distance) > 4


def _copy_check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    bounds = CopyCheck()
    return is_copy(a, b, bounds.max_local, bounds.max_relative)


def test_the_copy_check_alone_is_exact_on_real_photographs() -> None:
    """Every pair of photographs and copies through the check: every copy, crops too, and nothing else."""
    scores = evaluate(real_photographs(), lambda image: (0,), (0,), check=_copy_check)
    for name, score in scores.items():
        assert (score.recall, score.precision) == (1.0, 1.0), name


def test_the_filters_rule_is_precise_where_the_hash_alone_is_not() -> None:
    """pHash with crop variants within 8 bits, then the check (conf/paper's rule): every copy of a
    photograph but one 6% corner crop is flagged and no distinct photograph or embedded scene of
    the labelled set is, where the hash alone flags distinct embedded scenes."""
    photos = real_photographs()
    scenes = {f"scene_{i}": render_sample(SyntheticConfig(), "train", i).image for i in range(120)}
    hashes = lambda image: tuple(int(h) for h in _phashes(image, crop_variants=True))  # noqa: E731
    for name, score in evaluate(photos, hashes, (8,), check=_copy_check, crop_variants=True).items():
        assert score.precision == 1.0, name
        assert score.recall >= (0.9 if name == "crop_6pct_corner" else 1.0), name
    checked = evaluate(scenes, hashes, (8,), check=_copy_check, crop_variants=True)
    hash_only = evaluate(scenes, hashes, (8,), crop_variants=True)
    assert sum(s.flagged_negatives for s in hash_only.values()) > 50
    assert sum(s.flagged_negatives for s in checked.values()) == 0
    for name in ("jpeg_q75", "resize_1.5x", "crop_2pct_sides", "crop_4pct_sides", "crop_6pct_corner",
                 "brightness_+10pct", "contrast_-10pct"):
        assert checked[name].recall >= 0.95, name


def test_crop_variants_find_the_crops_the_own_hash_misses() -> None:
    photos = real_photographs()
    crops = {name: TRANSFORMS[name] for name in ("crop_2pct_sides", "crop_4pct_sides", "crop_6pct_corner")}
    own = evaluate(photos, lambda image: (_phash(image),), (8,), crops)
    with_crops = evaluate(photos, lambda image: tuple(int(h) for h in _phashes(image, crop_variants=True)), (8,),
                          crops, crop_variants=True)
    assert sum(s.flagged_positives for s in own.values()) < 0.6 * sum(s.positives for s in own.values())
    assert sum(s.flagged_positives for s in with_crops.values()) >= sum(s.positives for s in own.values()) - 1
