"""How learnable the embedded labelled task is: a small supervised CNN and raw-pixel baselines.

The labelled split of the embedded dataset (``synthetic.generator.write_labelled_folder``) is only a
useful yardstick for tokenizers if it sits between two bounds:

* **learnable**: a small CNN trained from scratch on the split reaches a high accuracy,
  so the labels are visible in the pixels;
* **not a template**: a linear classifier on raw pixels stays low, so a probe needs a
  representation (position, colour and background must be factored out).

A tokenizer's linear probe on its bottleneck latents should land between them. This module
renders a split as the generator writes it and coarsens it (what a coarse reconstruction keeps);
the supervised reference (``train_cnn``) is ``metrics.reference``'s, the probes on frozen
features are ``metrics.understanding``'s, and ``benchmarks/embedded_task.py`` prints all of
them as a table.
Everything is seeded and runs on CPU in minutes.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch.nn import functional as F

from vtp_kedro.vtp.data.imagefolder import LabelledSplit, image_tensor
from vtp_kedro.vtp.synthetic.generator import SHAPES, SyntheticConfig, encode_jpeg, render_sample


def render_labelled_split(config: SyntheticConfig, split: str, per_class: int) -> LabelledSplit:
    """The images ``write_labelled_folder`` would write for ``split``, decoded from the same JPEG bytes."""
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for index in range(per_class):
            jpeg = encode_jpeg(render_sample(config, split, index, main_shape=shape).image)
            images.append(image_tensor(Image.open(io.BytesIO(jpeg))))
            labels.append(label)
    return LabelledSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64), SHAPES)


def coarsened(split: LabelledSplit, factor: int = 2) -> LabelledSplit:
    """The split downsampled ``factor`` times (antialiased bilinear) and upsampled back (bilinear):
    what a reconstruction that keeps only a ``factor``-times coarser grid can show. A classifier
    of the originals that still reads these knows the class from its coarse shape."""
    x = split.images.float()
    small = F.interpolate(x, scale_factor=1 / factor, mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return LabelledSplit(back.round().clamp(0, 255).to(torch.uint8), split.labels, split.classes)
