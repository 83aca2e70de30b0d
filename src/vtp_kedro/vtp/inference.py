"""A trained tokenizer, ready to use: ``tok = load_tokenizer(path)``; ``tok.encode(images)``; ``tok.decode(z)``.

Two kinds of folder hold a tokenizer:

- an *inference folder* (what every stage that trains a tokenizer exports, and what downstream
  stages and users read): ``tokenizer.safetensors`` (the ``VisualTokenizer`` weights: encoder,
  bottleneck, pixel decoder) and ``config.json`` (``{"format", "tokenizer", "image_size", ...}``),
  a few MB at tiny size;
- a full training checkpoint (``model.safetensors`` whose ``tokenizer.*`` keys are the
  tokenizer, beside the resolved run config ``config.json``, or two folders up for a run's
  ``checkpoints/step_*`` folder). Only the tokenizer's tensors are read: no text tower, no
  teacher, no optimizer state.

``encode`` and ``decode`` work on images in [0, 1]; the ImageNet normalisation stays inside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.nn import functional as F

from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.core.tensors import save_tensors
from vtp_kedro.vtp.data.preprocess import denormalize, tokenize
from vtp_kedro.vtp.data.preprocess import normalize as normalize_pixels  # frees the name for open_clip's normalize=
from vtp_kedro.vtp.engine.checkpoint import INFERENCE_WEIGHTS_FILE, MODEL_FILE, load_state_strictly
from vtp_kedro.vtp.models.heads import CLIPProjection
from vtp_kedro.vtp.models.text import TextEncoder
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig, TokenizerFeatures, VisualTokenizer
from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPConfig

INFERENCE_CONFIG_FILE = "config.json"
INFERENCE_FORMAT = "vtp_kedro.tokenizer/1"
TOKENIZER_PREFIX = "tokenizer."  # where a training model keeps its VisualTokenizer


class Tokenizer(nn.Module):
    """Encoder, bottleneck and pixel decoder of a trained tokenizer, in eval mode, without gradients.

    ``encode(images)``: (B, 3, H, W) in [0, 1] -> latents (B, d, H/p, W/p);
    ``decode(latents)`` -> images in [0, 1]. ``image_size`` is the size it was trained at.
    """

    def __init__(self, config: TokenizerConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.net = VisualTokenizer(config)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Tokenizer:
        return super().train(False)  # an inference model: dropout and drop path stay off

    @property
    def patch_size(self) -> int:
        return self.config.encoder.patch_size

    def latent_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """(d, h, w) of the latents of ``image_size``-pixel square images (default: the training size)."""
        size = self.image_size if image_size is None else image_size
        if size % self.patch_size:
            raise ValueError(f"image size {size} is not a multiple of the patch size {self.patch_size}")
        return self.config.latent_dim, size // self.patch_size, size // self.patch_size

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1]; got {images.dtype} (divide uint8 pixels by 255)")
        return self.net.encode(normalize_pixels(images))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return denormalize(self.net.decode(latents))

    @torch.no_grad()
    def features(self, images: Tensor) -> TokenizerFeatures:
        """One encoder pass over images in [0, 1]: trunk tokens, latent tokens (CLS first) and the grid."""
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1]; got {images.dtype} (divide uint8 pixels by 255)")
        return self.net.forward_features(normalize_pixels(images))


def tokenizer_state(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``VisualTokenizer`` weights inside a training model's state dict (its ``tokenizer.*`` keys)."""
    state = {k.removeprefix(TOKENIZER_PREFIX): v for k, v in model_state.items() if k.startswith(TOKENIZER_PREFIX)}
    if not state:
        raise KeyError(f"the model state holds no {TOKENIZER_PREFIX}* weights")
    return state


def write_tokenizer_files(folder: str | Path, state: dict[str, Tensor], config: TokenizerConfig, image_size: int,
                          provenance: dict[str, Any] | None = None) -> None:
    """Write an inference folder's files into the existing ``folder`` (not atomic by itself);
    the same weights, config and provenance give the same bytes."""
    folder = Path(folder)
    save_tensors(state, folder / INFERENCE_WEIGHTS_FILE)
    record = {"format": INFERENCE_FORMAT, "tokenizer": config.model_dump(mode="json"), "image_size": image_size,
              "provenance": provenance or {}}
    (folder / INFERENCE_CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def save_tokenizer(folder: str | Path, state: dict[str, Tensor], config: TokenizerConfig, image_size: int,
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write an inference folder atomically (see ``write_tokenizer_files``)."""
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        write_tokenizer_files(tmp, state, config, image_size, provenance)
    return Path(folder)


def _read_selected(path: Path, prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix`` in a ``save_tensors`` file, prefix stripped, aliases resolved."""
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
        wanted = [k for k in (*handle.keys(), *aliases) if k.startswith(prefix)]
        return {k.removeprefix(prefix): handle.get_tensor(aliases.get(k, k)) for k in wanted}


def _run_config(folder: Path) -> dict[str, Any] | None:
    for candidate in (folder / INFERENCE_CONFIG_FILE, folder.parent.parent / INFERENCE_CONFIG_FILE):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


@dataclass(frozen=True)
class TokenizerSource:
    """Where a tokenizer folder keeps what ``load_tokenizer`` reads (see the module docstring)."""

    config: TokenizerConfig
    image_size: int
    weights: Path  # the safetensors file
    prefix: str  # of the tokenizer's keys in it: "" (inference folder) or "tokenizer." (training model)


def tokenizer_source(path: str | Path) -> TokenizerSource:
    """Read a tokenizer folder's config and say where its weights are; a clear error for any other folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    not_a_tokenizer = (f"{folder} is not a tokenizer: expected an inference folder ({INFERENCE_WEIGHTS_FILE} + "
                       f"{INFERENCE_CONFIG_FILE}) or a training checkpoint folder ({MODEL_FILE} with its run's "
                       f"{INFERENCE_CONFIG_FILE})")
    config = _run_config(folder)
    if (folder / INFERENCE_WEIGHTS_FILE).is_file() and config is not None and config.get("format") == INFERENCE_FORMAT:
        return TokenizerSource(TokenizerConfig.model_validate(config["tokenizer"]), config["image_size"],
                               folder / INFERENCE_WEIGHTS_FILE, "")
    if (folder / MODEL_FILE).is_file() and config is not None and "task" in config:
        try:
            tokenizer_config = config["task"]["model"]["tokenizer"]
            image_size = config["task"]["data"]["image_size"]
        except KeyError:
            raise ValueError(f"{not_a_tokenizer}; its run config has no task.model.tokenizer "
                             "or task.data.image_size") from None
        return TokenizerSource(TokenizerConfig.model_validate(tokenizer_config), image_size,
                               folder / MODEL_FILE, TOKENIZER_PREFIX)
    raise ValueError(not_a_tokenizer)


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """Open the tokenizer in an inference folder or a training checkpoint folder (see the module docstring)."""
    source = tokenizer_source(path)
    tokenizer = Tokenizer(source.config, source.image_size)
    load_state_strictly(tokenizer.net, _read_selected(source.weights, source.prefix),
                        f"{path}: the weights for its tokenizer config")
    return tokenizer.to(device)


class CLIPTowers(nn.Module):
    """The image and text towers of a checkpoint trained with the contrastive objective, for zero-shot use.

    ``encode_image(images)`` reads images in [0, 1] and projects the CLS token of the features
    the CLIP head was trained on (``semantic_features``: bottleneck or trunk); ``encode_text``
    reads BPE ids from ``tokenize``. Both accept ``normalize`` as open_clip's models do, so
    open_clip's zero-shot helpers take this module as it is.
    """

    def __init__(self, config: VTPConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = VisualTokenizer(config.tokenizer)
        semantic_dim = (config.tokenizer.encoder.width if config.semantic_features == "trunk"
                        else config.tokenizer.latent_dim)
        self.text = TextEncoder(config.text, config.embed_dim)
        self.clip_projection = CLIPProjection(semantic_dim, config.embed_dim)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPTowers:
        return super().train(False)

    def tokenize(self, texts: list[str]) -> Tensor:
        return tokenize(texts, self.config.text.context_length)

    @torch.no_grad()
    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        features = self.tokenizer.forward_features(normalize_pixels(images))
        embedding = self.clip_projection(VisualTokenizer.semantic_features(features, self.config.semantic_features)[:, 0])
        return F.normalize(embedding, dim=-1) if normalize else embedding

    @torch.no_grad()
    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        embedding = self.text(tokens)
        return F.normalize(embedding, dim=-1) if normalize else embedding


class NoTextTowerError(ValueError):
    """The checkpoint was trained without the contrastive objective: there is nothing to zero-shot with."""


def load_clip_towers(path: str | Path, device: str | torch.device = "cpu") -> CLIPTowers:
    """The CLIP towers of a pre-training checkpoint folder (``model.safetensors`` beside its run config)."""
    folder = Path(path)
    config = _run_config(folder)
    if not (folder / MODEL_FILE).is_file() or config is None or "task" not in config:
        raise ValueError(f"{folder} is not a pre-training checkpoint ({MODEL_FILE} with its run's "
                         f"{INFERENCE_CONFIG_FILE}); zero-shot needs the text tower, which inference folders omit")
    model_config = VTPConfig.model_validate(config["task"]["model"])
    if model_config.lambdas[2] == 0:
        raise NoTextTowerError(f"{folder}: objective {model_config.objective!r} trains no text tower (lambda_clip = 0)")
    towers = CLIPTowers(model_config)
    state = {f"{prefix}{key}": value for prefix in ("tokenizer.", "text.", "clip_projection.")
             for key, value in _read_selected(folder / MODEL_FILE, prefix).items()}
    load_state_strictly(towers, state, f"{folder}: the CLIP towers of its config")
    return towers.to(device)
