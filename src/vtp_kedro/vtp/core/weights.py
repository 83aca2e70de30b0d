"""Where pretrained files come from: a configured folder or the torch hub cache, never the network.

Runs happen on machines without internet access, so nothing is downloaded at run time.
A missing file is an error at start-up that names the file, every folder searched and
the address to fetch it from by hand. Known files are listed in ``KNOWN_WEIGHTS`` so a
caller only needs the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class KnownWeights:
    """A pretrained file the library uses: where to fetch it and what needs it."""

    url: str
    used_by: str


KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "vgg16-397923af.pth": KnownWeights(
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        used_by="the LPIPS perceptual loss (torchvision VGG16, ImageNet weights)",
    ),
    "weights-inception-2015-12-05-6726825d.pth": KnownWeights(
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
        used_by="FID, Inception Score and precision/recall (torch-fidelity's inception-v3-compat, "
                "the TF Inception of ADM's evaluator)",
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained file is in none of the searched folders."""


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where ``torch.hub`` and torchvision keep downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(filename: str, weights_dir: str | None = None, url: str | None = None) -> Path:
    """Return the path of ``filename`` from ``weights_dir`` or else the torch hub checkpoint folder.

    ``url`` is only used in the error message; it defaults to the ``KNOWN_WEIGHTS`` entry.
    Raises ``WeightsNotFoundError`` if the file is in neither folder.
    """
    if not filename or Path(filename).name != filename:
        raise ValueError(f"weights filename must be a bare file name, got {filename!r}")
    folders = []
    if weights_dir is not None:
        folders.append((Path(weights_dir).expanduser(), "weights_dir"))
    folders.append((hub_checkpoint_dir(), "$TORCH_HOME/hub/checkpoints"))
    for folder, _ in folders:
        candidate = folder / filename
        if candidate.is_file():
            return candidate

    known = KNOWN_WEIGHTS.get(filename)
    url = url or (known.url if known else None)
    searched = "\n".join(
        f"  - {folder} ({label}{'' if folder.is_dir() else ', folder does not exist'})"
        for folder, label in folders
    )
    purpose = f" It is needed by {known.used_by}." if known else ""
    if url:
        fetch = (f"Download it by hand from {url} into one of these folders, e.g.\n"
                 f"  curl -L --create-dirs -o {folders[0][0] / filename} {url}")
    else:
        fetch = "No download address is known for it: place the file in one of these folders."
    raise WeightsNotFoundError(
        f"Pretrained weights file {filename!r} not found.{purpose} Searched:\n{searched}\n"
        f"Nothing is downloaded at run time. {fetch}"
    )
