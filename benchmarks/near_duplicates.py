"""Precision and recall of near-duplicate hash rules on a labelled set (vtp.curation.near_duplicates).

    python benchmarks/near_duplicates.py [--embedded 300] [--max-side 256] [--dataset 8192]

Two sets of originals: scikit-image's bundled photographs (downsized to --max-side, web-image
sizes) and --embedded images of the embedded generator (32 px). Each original gets one copy per
transformation (JPEG q50/q75, resize 0.5x/1.5x, crops of 2% and 4% off every side and 6% off one
corner, brightness and contrast +-10%). For each rule (hash kinds ANDed, a Hamming threshold
each) it prints recall and precision per transformation and set, then the distances behind
them: the largest copy distance per transformation and the closest distinct pairs. Rules marked
"+ check" add the filter's copy check (vtp.curation.copy_detection) to the hash, as the filter does.

--dataset N then runs the filter's rule (pHash within --hamming bits, then the check) over the
first N images of the embedded captioned split, every one a distinct scene by the generator,
and prints each pair the rule flags with what tells the two scenes apart. Needs scikit-image
(pip install scikit-image). Asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import imagehash
import numpy as np
from PIL import Image

from vtp_kedro.vtp.curation.copy_detection import is_copy, thumbnail
from vtp_kedro.vtp.curation.filters import CopyCheck, _phashes
from vtp_kedro.vtp.curation.near_duplicates import (
    TRANSFORMS,
    closest_distinct_pairs,
    distances,
    evaluate,
    flagged_by_hashes,
    real_photographs,
)
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, render_sample, sample_scene

BOUNDS = CopyCheck()


def copy_check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return is_copy(a, b, BOUNDS.max_local, BOUNDS.max_relative)


def _bits(image_hash: imagehash.ImageHash) -> int:
    return int(str(image_hash), 16)


def phash(image: Image.Image) -> tuple[int, ...]:
    return (_bits(imagehash.phash(image)),)


def dhash(image: Image.Image) -> tuple[int, ...]:
    return (_bits(imagehash.dhash(image)),)


def phash_and_colour(image: Image.Image) -> tuple[int, ...]:
    """Structure (pHash) and colour (ImageHash's colorhash: a 42-bit histogram of hue and saturation)."""
    return _bits(imagehash.phash(image)), _bits(imagehash.colorhash(image, binbits=3))


def ycbcr_phash(image: Image.Image) -> tuple[int, ...]:
    """A pHash of each YCbCr channel: colour-aware structure (a red and a blue star differ in Cb and Cr)."""
    return tuple(_bits(imagehash.phash(channel)) for channel in image.convert("YCbCr").split())


def blind(image: Image.Image) -> tuple[int, ...]:
    return (0,)


def phash_and_crops(image: Image.Image) -> tuple[int, ...]:
    """The filter's hashes of an image: its own pHash, then its crop variants' (filters.CROP_VARIANTS)."""
    return tuple(int(h) for h in _phashes(image, crop_variants=True))


RULES = {  # name: (hasher, thresholds, check, crop variants)
    "phash <= 4": (phash, (4,), None, False),
    "phash <= 10": (phash, (10,), None, False),
    "dhash <= 12": (dhash, (12,), None, False),
    "phash <= 10 & colorhash <= 6": (phash_and_colour, (10, 6), None, False),
    "ycbcr phash <= (10, 12, 12)": (ycbcr_phash, (10, 12, 12), None, False),
    "phash <= 8 + check": (phash, (8,), copy_check, False),
    "phash <= 12 + check": (phash, (12,), copy_check, False),
    "phash+crops <= 8": (phash_and_crops, (8,), None, True),
    "phash+crops <= 8 + check (filter)": (phash_and_crops, (8,), copy_check, True),
    "check alone": (blind, (0,), copy_check, False),
}


def embedded_images(count: int) -> dict[str, Image.Image]:
    config = SyntheticConfig()
    return {f"embedded_{i}": render_sample(config, "train", i).image.convert("RGB") for i in range(count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", type=int, default=300, help="embedded-generator originals")
    parser.add_argument("--max-side", type=int, default=256, help="photographs downsized to this longer side")
    parser.add_argument("--dataset", type=int, default=0, help="embedded images the filter's rule runs over")
    parser.add_argument("--hamming", type=int, default=8, help="the rule's pHash threshold for --dataset")
    args = parser.parse_args()
    sets = {"photos": real_photographs(args.max_side), "embedded": embedded_images(args.embedded)}
    print(f"originals: {len(sets['photos'])} photographs, {len(sets['embedded'])} embedded images; "
          f"{len(TRANSFORMS)} transformations\n")
    header = f"{'rule':<32}{'set':<10}" + "".join(f"{name[:13]:>14}" for name in TRANSFORMS)
    print("recall / precision per transformation")
    print(header)
    for rule, (hasher, thresholds, check, crop_variants) in RULES.items():
        for set_name, originals in sets.items():
            if hasher is blind and set_name == "embedded":
                continue  # every pair of 600 images through the check: minutes
            scores = evaluate(originals, hasher, thresholds, check=check, crop_variants=crop_variants)
            cells = "".join(f"{s.recall:>7.2f}/{s.precision:<6.2f}" for s in scores.values())
            print(f"{rule:<32}{set_name:<10}{cells}")
    print("\nlargest copy distance per transformation (per hash kind); closest distinct pairs")
    for name, hasher in {"phash": phash, "dhash": dhash, "phash, colorhash": phash_and_colour,
                         "ycbcr phash": ycbcr_phash}.items():
        for set_name, originals in sets.items():
            found = distances(originals, hasher)
            worst = {t: found[t].max(axis=0).tolist() for t in TRANSFORMS}
            closest = closest_distinct_pairs(originals, hasher, count=2)
            print(f"{name:<18}{set_name:<10}" + " ".join(f"{t}={v}" for t, v in worst.items()))
            print(f"{'':<28}closest distinct: " + "; ".join(f"{d} {a}~{b}" for d, a, b in closest)
                  + f"; distinct at 0 bits: {int(np.all(found['distinct'] == 0, axis=1).sum())} pairs")

    if args.dataset:
        flagged_in_dataset(args.dataset, args.hamming)


def _difference(a, b) -> str:
    """What tells two scenes apart, in the generator's own terms (the first difference found)."""
    if a.background.colour != b.background.colour:
        return "background colour"
    if a.background.pattern != b.background.pattern:
        return f"background pattern ({' vs '.join(sorted((a.background.pattern, b.background.pattern)))})"
    for field in ("shape", "colour", "position"):
        if getattr(a.objects[0], field) != getattr(b.objects[0], field):
            if field == "shape":
                return f"main shape ({' vs '.join(sorted((a.objects[0].shape, b.objects[0].shape)))})"
            return f"main {field}"
    if [(o.shape, o.colour, o.size, o.position) for o in a.objects[1:]] != \
            [(o.shape, o.colour, o.size, o.position) for o in b.objects[1:]]:
        return "small objects only"
    return "the same description (rotation, offset, texture angle or period, noise)"


def flagged_in_dataset(count: int, hamming: int) -> None:
    """The filter's rule over ``count`` distinct embedded images: what it flags, and why."""
    config = SyntheticConfig()
    images = [render_sample(config, "train", i).image for i in range(count)]
    hashes = np.stack([_phashes(image, crop_variants=True) for image in images])  # [count, 1 + variants]
    thumbnails = np.stack([thumbnail(image) for image in images])
    pairs = np.argwhere(np.triu(flagged_by_hashes(hashes, (hamming,), crop_variants=True), k=1))
    clock = time.perf_counter()
    flagged = copy_check(thumbnails[pairs[:, 0]], thumbnails[pairs[:, 1]])
    seconds = time.perf_counter() - clock
    print(f"\n{count} embedded images: {len(pairs)} pairs within {hamming} pHash bits (crop variants), "
          f"checked in {seconds:.1f} s ({1e3 * seconds / max(len(pairs), 1):.2f} ms/pair); "
          f"the rule flags {int(flagged.sum())} pairs")
    reasons = Counter(_difference(sample_scene(config, "train", int(i)), sample_scene(config, "train", int(j)))
                      for i, j in pairs[flagged])
    for reason, number in reasons.most_common():
        print(f"  {number:>5}  {reason}")


if __name__ == "__main__":
    main()
