"""Precision and recall of near-duplicate hash rules on a labelled set (vtp.data.near_duplicates).

    python benchmarks/near_duplicates.py [--embedded 300] [--max-side 256]

Two sets of originals: scikit-image's bundled photographs (downsized to --max-side, web-image
sizes) and --embedded images of the embedded generator (32 px). Each original gets one copy per
transformation (JPEG q50/q75, resize 0.5x/1.5x, crops of 2% and 4% off every side and 6% off one
corner, brightness and contrast +-10%). For each rule (hash kinds ANDed, a Hamming threshold
each) it prints recall and precision per transformation and set, then the distances behind
them: the largest copy distance per transformation and the closest distinct pairs. Needs
scikit-image (pip install scikit-image). Asserts nothing.
"""

from __future__ import annotations

import argparse

import imagehash
import numpy as np
from PIL import Image

from vtp_kedro.vtp.data.near_duplicates import TRANSFORMS, closest_distinct_pairs, distances, evaluate, real_photographs
from vtp_kedro.vtp.data.synthetic import SyntheticConfig, render_sample


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


RULES = {  # name: (hasher, thresholds)
    "phash <= 4 (filter default)": (phash, (4,)),
    "phash <= 10": (phash, (10,)),
    "dhash <= 12": (dhash, (12,)),
    "phash <= 10 & colorhash <= 6": (phash_and_colour, (10, 6)),
    "ycbcr phash <= (10, 12, 12)": (ycbcr_phash, (10, 12, 12)),
}


def embedded_images(count: int) -> dict[str, Image.Image]:
    config = SyntheticConfig()
    return {f"embedded_{i}": render_sample(config, "train", i).image.convert("RGB") for i in range(count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", type=int, default=300, help="embedded-generator originals")
    parser.add_argument("--max-side", type=int, default=256, help="photographs downsized to this longer side")
    args = parser.parse_args()
    sets = {"photos": real_photographs(args.max_side), "embedded": embedded_images(args.embedded)}
    print(f"originals: {len(sets['photos'])} photographs, {len(sets['embedded'])} embedded images; "
          f"{len(TRANSFORMS)} transformations\n")
    header = f"{'rule':<32}{'set':<10}" + "".join(f"{name[:13]:>14}" for name in TRANSFORMS)
    print("recall / precision per transformation")
    print(header)
    for rule, (hasher, thresholds) in RULES.items():
        for set_name, originals in sets.items():
            scores = evaluate(originals, hasher, thresholds)
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


if __name__ == "__main__":
    main()
