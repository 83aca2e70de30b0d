"""Are the DiT's class-conditional samples class-dependent? A classifier trained on real images says.

    python benchmarks/dit_samples.py [--data data/01_raw/labelled_images] [--tokenizer data/06_models/gan_tokenizer]
                                     [--samples data/07_model_output/dit_samples] [--epochs 12]

A generator can at best produce what its tokenizer decodes, so the judge is ``SmallCNN``
(``vtp.metrics.reference``) trained on the tokenizer's reconstructions of the labelled
training images (``decode(encode(x))``), with the real labels. It prints, beside chance (1/K):

(a) the judge's top-1 on the reconstructions of the val images: the ceiling a perfect
    generator on this tokenizer would reach;
(b) its top-1 on the samples (``samples.npz``), reading each sample's intended class from
    ``labels``, overall and per class;
(c) for scale, the same CNN trained on the raw images: its val top-1 and its top-1 on the
    samples (low when the tokenizer's rendering differs from the photographs').

With N samples the standard error of (b) at chance is sqrt(p (1 - p) / N). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.vtp.data.imagefolder import LabelledSplit, load_labelled_split
from vtp_kedro.vtp.inference import Tokenizer, load_tokenizer
from vtp_kedro.vtp.launch.sample_dit import read_samples
from vtp_kedro.vtp.metrics.reference import cnn_accuracy, train_cnn

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def reconstructed(split: LabelledSplit, tokenizer: Tokenizer, batch_size: int = 250) -> LabelledSplit:
    images = []
    for start in range(0, len(split.labels), batch_size):
        x = split.images[start:start + batch_size].float() / 255
        images.append((tokenizer.decode(tokenizer.encode(x)).clamp(0, 1) * 255).round().to(torch.uint8))
    return LabelledSplit(torch.cat(images), split.labels, split.classes)


@torch.no_grad()
def per_class_top1(model: torch.nn.Module, split: LabelledSplit) -> list[float]:
    predictions = model(((split.images.float() / 255) - 0.5) / 0.25).argmax(1)
    return [float((predictions[split.labels == k] == k).float().mean()) for k in range(len(split.classes))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/01_raw/labelled_images")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "data/06_models/gan_tokenizer")
    parser.add_argument("--samples", type=Path, default=ROOT / "data/07_model_output/dit_samples")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, val = load_labelled_split(args.data, "train"), load_labelled_split(args.data, "val")
    pixels, labels, record = read_samples(args.samples)
    if list(record["classes"]) != list(train.classes):
        raise ValueError(f"{args.samples} was drawn for classes {record['classes']}, {args.data} has {train.classes}")
    samples = LabelledSplit(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                            torch.from_numpy(labels).long(), train.classes)
    tokenizer = load_tokenizer(args.tokenizer, "cpu")
    start = time.perf_counter()
    judge = train_cnn(reconstructed(train, tokenizer), reconstructed(val, tokenizer), epochs=args.epochs)
    raw = train_cnn(train, val, epochs=args.epochs)
    seconds = time.perf_counter() - start

    chance = 1 / len(train.classes)
    stderr = math.sqrt(chance * (1 - chance) / len(samples.labels))
    on_samples = cnn_accuracy(judge.model, samples)
    print(f"{len(samples.labels)} samples of {len(train.classes)} classes ({args.samples}); sampler "
          f"{json.dumps(record['sampler'])}; DiT step {record.get('dit_step')}")
    print(f"classifiers trained in {seconds:.0f} s ({args.epochs} epochs each)\n")
    print(f"{'measure':<58}{'top-1':>8}")
    print(f"{'chance (1/K); std. error at chance for these N':<58}{chance:>8.3f}  +- {stderr:.3f}")
    print(f"{'(a) judge on val reconstructions (the ceiling)':<58}{judge.val_top1:>8.3f}")
    print(f"{'(b) judge on the samples (their intended class)':<58}{on_samples:>8.3f}")
    print(f"{'(c) CNN on raw images: val':<58}{raw.val_top1:>8.3f}")
    print(f"{'(c) CNN on raw images: samples':<58}{cnn_accuracy(raw.model, samples):>8.3f}")
    record_target("dit_training", "samples' class top-1 (judge) vs chance + 3 s.e.", on_samples, chance + 3 * stderr, True)
    print("\nper class, (b):")
    for name, top1 in zip(train.classes, per_class_top1(judge.model, samples), strict=True):
        print(f"  {name:<12}{top1:>8.3f}")


if __name__ == "__main__":
    main()
