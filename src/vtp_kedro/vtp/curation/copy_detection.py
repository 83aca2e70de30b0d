"""Is image ``b`` a copy of image ``a``? An aligned, colour-aware residual between two thumbnails.

A perceptual hash compares two images without aligning them, in grey: a crop of a few percent
moves every pixel (at 32 px, a stripe texture's phase by a quarter period) and flips many hash
bits, while two distinct scenes that differ by one small coloured object hash alike. So the
near-duplicate rule verifies each candidate pair that the hash bands propose (``vtp.curation.dedup``)
with the comparison below. ImageHash has no such comparison; it is written here.

Each image is kept as a ``SIDE`` x ``SIDE`` RGB thumbnail (``thumbnail``). For the direction
"``b`` is a copy of ``a``":

1. *Alignment.* A crop of up to ``MAX_CROP`` off any side is an axis-aligned window of ``a``:
   ``x in [x0, x1]``, ``y in [y0, y1]``. ``W_x`` resamples ``a``'s columns to the window
   (bilinear) and blurs them (a Gaussian of ``BLUR`` px, also applied to ``b``, so that two
   resamplings of one picture agree). The window of each axis is searched on the images'
   column and row mean profiles (1-D, cheap); the ``CANDIDATES`` best per axis are then tried
   in 2-D.
2. *Photometry.* Brightness and contrast changes are ``b ~ g a + o (1 - g)`` with one gain ``g``
   for all channels (PIL's enhancers are exactly that). In YCbCr, ``Y_b ~ g Y_a + o'`` and
   ``C_b ~ g C_a`` for the centred chroma ``C``; ``g`` and ``o'`` are the least-squares fit on
   luma, ``g`` clipped to ``[1 / MAX_GAIN, MAX_GAIN]``.
3. *Residual.* ``r = |(Y, Cb, Cr)_b - fit(W a)|`` per pixel, chroma averaged over 2 x 2 blocks
   first (JPEG's 4:2:0 subsampling smears chroma over 2 x 2 blocks; a 32-px copy is otherwise
   ruined in chroma), at the window with the least mean square residual. Two numbers:

       local    = max over 3 x 3 neighbourhoods of the mean of r     (grey levels)
       relative = rms(r) / rms(b - mean(b))                          (scale free)

``local`` is large where one image holds an object the other lacks, however small the object
is against the whole image; ``relative`` is large when everything differs a little, as between
two unrelated textures that a thumbnail blurs to similar grey. A pair is a copy when
``local <= max_local`` and ``relative <= max_relative``, each taken in the direction where it is
smaller (which image is the crop of the other is not known). The thresholds were measured
on a labelled set (``vtp.curation.near_duplicates``; docs/near-duplicates.md).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

SIDE = 32  # the thumbnail's side: the embedded images' own size, a few KB per sample
MAX_CROP = 0.1  # largest fraction cropped off one side that the alignment searches
CROP_STEP = 1 / 64  # window edges every half pixel of the thumbnail
BLUR = 0.6  # px of the thumbnail
CANDIDATES = 3  # windows per axis, from the profiles, tried in 2-D
MAX_GAIN = 1.25
_CHUNK = 128  # pairs per vectorised step: ~30 MB of intermediates
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], dtype=np.float32)  # JPEG's (ITU-R BT.601), chroma centred


def thumbnail(image: Image.Image) -> np.ndarray:
    """The ``SIDE`` x ``SIDE`` x 3 uint8 RGB thumbnail a pair is compared on."""
    return np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.uint8)


def _resampling(start: float, stop: float) -> np.ndarray:
    """[SIDE, SIDE]: bilinear samples of ``[start, stop]`` (fractions of the side) at SIDE points."""
    u = (np.arange(SIDE) + 0.5) / SIDE
    x = np.clip((start + u * (stop - start)) * SIDE - 0.5, 0, SIDE - 1)
    low = np.floor(x).astype(np.int64)
    high = np.minimum(low + 1, SIDE - 1)
    weight = (x - low).astype(np.float32)
    matrix = np.zeros((SIDE, SIDE), dtype=np.float32)
    np.add.at(matrix, (np.arange(SIDE), low), 1 - weight)
    np.add.at(matrix, (np.arange(SIDE), high), weight)
    return matrix


@functools.cache
def _operators() -> tuple[np.ndarray, np.ndarray]:
    """The blur [SIDE, SIDE] and every window's blurred resampling [windows, SIDE, SIDE]."""
    x = np.arange(SIDE, dtype=np.float32)
    blur = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * BLUR**2))
    blur /= blur.sum(axis=1, keepdims=True)
    edges = np.arange(0.0, MAX_CROP + 1e-9, CROP_STEP)
    windows = np.stack([blur @ _resampling(a, 1 - b) for a in edges for b in edges])
    return blur, windows


def _fit_residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y - (g x + o)``, least squares over the last axis, ``g`` clipped; shapes broadcast."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    gain = (dx * dy).sum(axis=-1, keepdims=True) / np.maximum((dx * dx).sum(axis=-1, keepdims=True), 1e-3)
    return dy - np.clip(gain, 1 / MAX_GAIN, MAX_GAIN) * dx


def _one_way(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local, relative) for "``b`` is a copy of ``a``"; ``a``, ``b`` float RGB [n, 3, SIDE, SIDE]."""
    blur, windows = _operators()
    n, k = len(a), CANDIDATES**2
    b = blur @ b @ blur.T
    # 1. each axis's windows from the mean profiles (RGB: one gain and one offset for all channels)
    transposed = np.swapaxes(windows, -1, -2)
    errors = []
    for axis in (2, 3):  # column profiles (mean over y), then row profiles (mean over x)
        warped_profiles = (a.mean(axis=axis)[:, None] @ transposed[None]).reshape(n, len(windows), -1)
        errors.append((_fit_residual(warped_profiles, b.mean(axis=axis).reshape(n, 1, -1)) ** 2).sum(-1))
    best_x = np.argsort(errors[0], axis=1, kind="stable")[:, :CANDIDATES]
    best_y = np.argsort(errors[1], axis=1, kind="stable")[:, :CANDIDATES]
    wy = windows[np.repeat(best_y, CANDIDATES, axis=1)]  # [n, k, S, S]: every pair of the axes' candidates
    wx = windows[np.tile(best_x, (1, CANDIDATES))]
    # 2. warp in YCbCr (warping is linear, so it commutes with the colour transform)
    a_ycc = np.einsum("kc,ncyx->nkyx", _YCBCR, a)  # no BLAS: a pair's numbers must not depend on its batch
    b_ycc = np.einsum("kc,ncyx->nkyx", _YCBCR, b)
    warped = wy[:, :, None] @ a_ycc[:, None] @ np.swapaxes(wx, -1, -2)[:, :, None]  # [n, k, 3, S, S]
    luma = warped[:, :, 0].reshape(n, k, -1)
    target = b_ycc[:, 0].reshape(n, 1, -1)
    centred = luma - luma.mean(-1, keepdims=True)
    gain = (centred * (target - target.mean(-1, keepdims=True))).sum(-1) / np.maximum((centred**2).sum(-1), 1e-3)
    gain = np.clip(gain, 1 / MAX_GAIN, MAX_GAIN)  # [n, k]
    luma_residual = (target - target.mean(-1, keepdims=True)) - gain[..., None] * centred
    # 3. chroma residual on 2 x 2 blocks (JPEG's subsampling), then the residual's size per pixel
    chroma = b_ycc[:, None, 1:] - gain[..., None, None, None] * warped[:, :, 1:]
    chroma = chroma.reshape(n, k, 2, SIDE // 2, 2, SIDE // 2, 2).mean(axis=(4, 6))
    size_squared = luma_residual.reshape(n, k, SIDE, SIDE) ** 2 + np.repeat(
        np.repeat((chroma**2).sum(axis=2), 2, axis=2), 2, axis=3)
    mean_square = size_squared.reshape(n, k, -1).mean(-1)
    best = mean_square.argmin(axis=1)  # the window that fits best
    size = np.sqrt(size_squared[np.arange(n), best])
    cumulative = np.pad(size, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
    box = (cumulative[:, 3:, 3:] - cumulative[:, :-3, 3:] - cumulative[:, 3:, :-3] + cumulative[:, :-3, :-3]) / 9
    spread = np.sqrt((((b_ycc - b_ycc.mean(axis=(2, 3), keepdims=True)) ** 2).sum(1)).mean(axis=(1, 2)))
    relative = np.sqrt(mean_square[np.arange(n), best]) / np.maximum(spread, 1.0)
    return box.reshape(n, -1).max(axis=1), relative


def _checked(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.shape[1:] != (SIDE, SIDE, 3):
        raise ValueError(f"expected two thumbnail arrays of shape [n, {SIDE}, {SIDE}, 3], got {a.shape} and {b.shape}")
    return a.astype(np.float32).transpose(0, 3, 1, 2), b.astype(np.float32).transpose(0, 3, 1, 2)


def copy_residuals(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local, relative), each [n, 2], of the pairs of ``thumbnail``s ``a[i]``, ``b[i]`` (uint8
    [n, SIDE, SIDE, 3]); column 0 for "b is a copy of a", column 1 for the other direction.
    Pairs go through in chunks of ``_CHUNK``, so memory does not grow with ``n``."""
    a, b = _checked(a, b)
    local, relative = np.empty((len(a), 2), np.float32), np.empty((len(a), 2), np.float32)
    for start in range(0, len(a), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        for direction, (source, target) in enumerate(((a[chunk], b[chunk]), (b[chunk], a[chunk]))):
            local[chunk, direction], relative[chunk, direction] = _one_way(source, target)
    return local, relative


def is_copy(a: np.ndarray, b: np.ndarray, max_local: float, max_relative: float) -> np.ndarray:
    """Booleans [n]: pair ``i`` is a copy (each residual, in its closer direction, within its bound)."""
    local, relative = copy_residuals(a, b)
    return (local.min(axis=1) <= max_local) & (relative.min(axis=1) <= max_relative)
