"""The embedded captioned-image dataset (version 2): one large shape per image, with captions.

No image can be downloaded here, so the default data is drawn. A scene is one large main
object (its shape is the class label) filling 55-80% of the image side, jittered around the
centre and rotated, at most one small distractor of another shape in a corner behind it, on a
low-contrast textured background. Object and background colours are uniformly random (a
caption names the nearest palette colour), so colour says nothing about the class and a linear template of raw pixels
cannot read it, while the shape survives a 2x downsampling and a multi-crop (the calibration
is ``vtp.data.embedded_task`` and ``benchmarks/embedded_task.py``). Each image comes with a
natural-language caption ("a big blue star near the middle, a tiny pink ring in the top left
corner, on a striped grey background"): the main shape is named in most captions, among its
colour, size and place, not always first and not always at all.

Every sample is a pure function of ``(seed, split, index)``: its random numbers come from
``numpy.random.SeedSequence([seed, crc32(split), index])``, so samples can be generated in
any order or in parallel and any one can be regenerated alone. The scene and the caption
draw from separate child streams, so rewording captions never changes images.

The outputs are the formats real data comes in: WebDataset shards as img2dataset writes
them (``key.jpg`` + ``key.txt`` + ``key.json``) and an ImageNet-style labelled folder.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydantic
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.io import atomic_path
from vtp_kedro.vtp.data.shards import ShardInfo, write_shards

# The class-label order of the captioned shards' ``label`` field.
# Sorted, so that a label index is the same in the shards' metadata and in the ImageNet-style
# folder (whose readers number the sorted class folders, as torchvision's ImageFolder does).
SHAPES: tuple[str, ...] = (
    "circle", "crescent", "cross", "diamond", "heart", "hexagon", "ring", "square", "star", "triangle",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 215, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (135, 60, 185),
    "pink": (245, 130, 190),
    "brown": (125, 80, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "grey": (128, 128, 128),
    "cyan": (40, 200, 215),
}
BACKGROUNDS: tuple[str, ...] = ("solid", "stripes", "checks", "dots", "noise_gradient")
CORNERS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

MAIN_SIZE = (0.55, 0.80)  # the main object's bounding box, as a fraction of the image side
DISTRACTOR_SIZE = (0.14, 0.22)  # the distractor's: always far smaller than the main object
# Most scenes carry a distractor: besides making the task need more than a template, it keeps two
# distinct scenes of one shape apart for the near-duplicate rule (one corner object differs).
DISTRACTOR_PROBABILITY = 0.9
CENTRE_JITTER = 0.6  # the main object's centre moves up to this share of its free margin
JPEG_QUALITY = 95  # img2dataset's default
SUPERSAMPLE = 4  # drawn at 4x the output side, then LANCZOS-downsampled: anti-aliased edges
MAX_ROTATION = 20.0  # degrees; more would turn a square into a diamond and a cross into an x
MIN_CONTRAST = 120.0  # RGB distance between an object's colour and both background tones
TEXTURE_CONTRAST = 0.15  # the texture's second tone: the background colour moved 15% towards white or black
TEXTURE_PERIODS = (1 / 8, 1 / 6, 1 / 5)  # stripe/check/dot period as a fraction of the image side
TEXTURE_ANGLES = (0, 45, 90, 135)
NOISE_STD = 6.0  # grey levels of the noise-gradient background's per-pixel noise
# Half the scenes are softly out of focus, so that a classifier of the shapes (the evaluation's
# reference, the supervised ceiling) also knows them at the sharpness of a coarse reconstruction.
BLUR_PROBABILITY = 0.5
BLUR_RADIUS = (0.3, 1.2)
SHAPE_NAMED = 0.85  # share of captions that name the main shape (the rest say "shape", "object", ...)
# Share of the main object's and of the background's descriptions that name a colour. Colours
# are the easiest thing to match a caption by; named always, they are all a contrastive
# objective learns, and the shape (the class) never is.
COLOUR_NAMED = 0.35


class SyntheticConfig(Config):
    """Resolution, seed and scene complexity of the generated dataset.

    ``max_objects`` is 1 (the main object alone) or 2 (a small distractor in 90% of the scenes).
    """

    image_size: int = pydantic.Field(32, ge=16)
    seed: int = pydantic.Field(0, ge=0)
    max_objects: int = pydantic.Field(2, ge=1, le=2)


@dataclass(frozen=True)
class SceneObject:
    """One object: its bounding box's centre ``(cx, cy)`` and long side ``size``, as fractions of the image side.

    ``rgb`` is the colour drawn, ``colour`` the nearest palette name (what the caption says).
    """

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: float
    cx: float
    cy: float
    rotation: float
    place: str  # "centre" for the main object, a corner for a distractor


@dataclass(frozen=True)
class Background:
    """A textured background: ``period`` is a fraction of the image side, ``angle`` in degrees."""

    pattern: str
    colour: str
    rgb: tuple[int, int, int]
    angle: int
    period: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw an image; ``objects[0]`` is the main (labelled) object."""

    objects: tuple[SceneObject, ...]
    background: Background
    blur: float = 0.0  # Gaussian radius in output pixels: soft focus, as photographs have it

    @property
    def label(self) -> int:
        return SHAPES.index(self.objects[0].shape)


@dataclass(frozen=True)
class SyntheticSample:
    image: Image.Image
    caption: str
    label: int
    label_name: str
    metadata: dict


def _split_id(split: str) -> int:
    # crc32, not hash(): str hashes are salted per process, and samples must match across processes.
    if not split:
        raise ValueError("split must be a non-empty name, got ''")
    return zlib.crc32(split.encode("utf-8"))


def _seed_sequence(config: SyntheticConfig, split: str, index: int, main_shape: str | None) -> np.random.SeedSequence:
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    entropy = [config.seed, _split_id(split), index]
    if main_shape is not None:
        if main_shape not in SHAPES:
            raise ValueError(f"main_shape {main_shape!r} is not one of {SHAPES}")
        # A forced sample is its own stream: it never repeats the unforced sample of the same index.
        entropy.append(1 + SHAPES.index(main_shape))
    return np.random.SeedSequence(entropy)


def _second_tone(rgb: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """The texture's other tone: the colour moved ``TEXTURE_CONTRAST`` towards white (dark) or black (light)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    target = 255.0 if luminance < 140 else 0.0
    return rgb + TEXTURE_CONTRAST * (target - rgb)


_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)


def colour_name(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """The palette name nearest to ``rgb`` (what a caption calls the colour)."""
    return list(COLOURS)[int(np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float64), axis=1).argmin())]


def _random_colour(rng: np.random.Generator, avoid: tuple[np.ndarray, ...] = ()) -> tuple[int, int, int]:
    """A uniformly random RGB colour at least ``MIN_CONTRAST`` from every colour in ``avoid``.

    Colours are continuous, not a palette, so that two distinct scenes almost never share both
    their object's and their background's colour: the near-duplicate rule, which forgives a
    brightness or contrast change, must not take one for a copy of the other.
    """
    for _ in range(1000):
        rgb = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(rgb - tone) >= MIN_CONTRAST for tone in avoid):
            return tuple(int(v) for v in rgb)
    raise RuntimeError(f"no colour {MIN_CONTRAST} from {avoid} in 1000 draws")  # cannot happen for one background


def sample_scene(config: SyntheticConfig, split: str, index: int, main_shape: str | None = None) -> Scene:
    """Draw the scene description of sample ``index`` of ``split`` (optionally forcing the main shape)."""
    rng = np.random.default_rng(_seed_sequence(config, split, index, main_shape).spawn(2)[0])
    background_rgb = _random_colour(rng)
    background = Background(
        pattern=str(rng.choice(BACKGROUNDS)),
        colour=colour_name(background_rgb),
        rgb=background_rgb,
        angle=int(rng.choice(TEXTURE_ANGLES)),
        period=float(rng.choice(TEXTURE_PERIODS)),
        noise_seed=int(rng.integers(2**31)),
    )
    main = main_shape if main_shape is not None else str(rng.choice(SHAPES))
    size = float(rng.uniform(*MAIN_SIZE))
    margin = (1.0 - size) / 2 * CENTRE_JITTER
    tones = (np.asarray(background_rgb, dtype=np.float64), _second_tone(background_rgb))
    main_rgb = _random_colour(rng, tones)
    objects = [SceneObject(
        shape=main, colour=colour_name(main_rgb), rgb=main_rgb, size=round(size, 4),
        cx=round(0.5 + float(rng.uniform(-margin, margin)), 4), cy=round(0.5 + float(rng.uniform(-margin, margin)), 4),
        rotation=round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 2), place="centre",
    )]
    # Always drawn, so that a scene's other numbers do not depend on max_objects or on whether it has one.
    distractor_shape = str(rng.choice([s for s in SHAPES if s != main]))
    distractor_size = float(rng.uniform(*DISTRACTOR_SIZE))
    corner = str(rng.choice(CORNERS))
    rotation = round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 2)
    distractor_rgb = _random_colour(rng, tones)
    present = rng.random() < DISTRACTOR_PROBABILITY
    if config.max_objects > 1 and present:
        half = distractor_size / 2 + 0.02
        objects.append(SceneObject(
            shape=distractor_shape, colour=colour_name(distractor_rgb), rgb=distractor_rgb,
            size=round(distractor_size, 4), cx=round(half if "left" in corner else 1 - half, 4),
            cy=round(half if "top" in corner else 1 - half, 4), rotation=rotation, place=corner,
        ))
    blur = round(float(rng.uniform(*BLUR_RADIUS)), 3) if rng.random() < BLUR_PROBABILITY else 0.0
    return Scene(objects=tuple(objects), background=background, blur=blur)


# ---- drawing ---------------------------------------------------------------------------------

def _regular_polygon(vertices: int, phase_degrees: float) -> np.ndarray:
    angles = np.deg2rad(phase_degrees + 360.0 * np.arange(vertices) / vertices)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


def _heart(points: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    return np.stack([x, y], axis=1)


# Outlines in image coordinates (y down), before rotation and fitting into the unit box.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": _regular_polygon(3, -90.0),
    "star": _star(),
    "cross": _cross(),
    "hexagon": _regular_polygon(6, 0.0),
    "heart": _heart(),
    "diamond": np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=np.float64),
}


def _fitted_outline(shape: str, rotation: float) -> np.ndarray:
    """The shape's outline rotated, centred and scaled so its bounding box is exactly [-1, 1] on its long side."""
    theta = np.deg2rad(rotation)
    rotate = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = _POLYGONS[shape] @ rotate.T
    points = points - (points.max(axis=0) + points.min(axis=0)) / 2
    return points / np.abs(points).max()


def _object_box(obj: SceneObject, side: int) -> tuple[float, float, float]:
    """Centre (x, y) and half-extent, in pixels of a ``side``-pixel canvas, of an object's bounding box."""
    return obj.cx * side, obj.cy * side, obj.size * side / 2


def _draw_object(canvas: Image.Image, obj: SceneObject) -> None:
    cx, cy, half = _object_box(obj, canvas.width)
    colour = obj.rgb
    draw = ImageDraw.Draw(canvas)
    box = (cx - half, cy - half, cx + half, cy + half)
    if obj.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif obj.shape == "ring":
        draw.ellipse(box, outline=colour, width=max(1, round(0.34 * half)))
    elif obj.shape == "crescent":
        # A disc minus an offset disc, cut through a mask so the background shows in the bite.
        mask = Image.new("L", canvas.size, 0)
        mask_draw = ImageDraw.Draw(mask)
        mask_draw.ellipse(box, fill=255)
        theta = np.deg2rad(obj.rotation)
        bx, by, bite = cx + 0.45 * half * np.cos(theta), cy + 0.45 * half * np.sin(theta), 0.85 * half
        mask_draw.ellipse((bx - bite, by - bite, bx + bite, by + bite), fill=0)
        canvas.paste(colour, mask=mask)
    else:
        outline = _fitted_outline(obj.shape, obj.rotation) * half + np.array([cx, cy])
        draw.polygon([tuple(p) for p in outline], fill=colour)


@functools.cache
def _pixel_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the supersampled canvas, in output-pixel units."""
    coords = (np.arange(image_size * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    return np.meshgrid(coords, coords)  # x, y


def _texture_mix(background: Background, image_size: int) -> np.ndarray:
    """Per-pixel weight of the second tone, in [0, 1], on the supersampled canvas."""
    x, y = _pixel_grid(image_size)
    period = background.period * image_size
    theta = np.deg2rad(background.angle)
    if background.pattern == "stripes":
        return np.floor(2 * (x * np.cos(theta) + y * np.sin(theta)) / period) % 2
    if background.pattern == "checks":
        return (np.floor(2 * x / period) + np.floor(2 * y / period)) % 2
    if background.pattern == "dots":
        return (np.hypot(x % period - period / 2, y % period - period / 2) < 0.25 * period).astype(np.float32)
    if background.pattern == "noise_gradient":
        extent = (np.abs(np.cos(theta)) + np.abs(np.sin(theta))) * image_size
        low = min(0.0, np.cos(theta) * image_size) + min(0.0, np.sin(theta) * image_size)
        return (x * np.cos(theta) + y * np.sin(theta) - low) / extent
    raise ValueError(f"unknown background pattern {background.pattern!r}; expected one of {BACKGROUNDS}")


def _draw_background(background: Background, image_size: int) -> Image.Image:
    side = image_size * SUPERSAMPLE
    base = background.rgb
    if background.pattern == "solid":
        return Image.new("RGB", (side, side), base)
    tone = _second_tone(base).astype(np.float32)
    base_array = np.asarray(base, dtype=np.float32)
    pixels = base_array + _texture_mix(background, image_size)[..., None] * (tone - base_array)
    if background.pattern == "noise_gradient":
        # Grey-level noise at output resolution (repeated over each supersampled block) so downsampling keeps it.
        noise = np.random.default_rng(background.noise_seed).normal(0.0, NOISE_STD, (image_size, image_size))
        pixels = pixels + np.repeat(np.repeat(noise, SUPERSAMPLE, 0), SUPERSAMPLE, 1)[..., None].astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def draw_scene(scene: Scene, image_size: int) -> Image.Image:
    """Render ``scene`` as an ``image_size`` x ``image_size`` RGB image."""
    canvas = _draw_background(scene.background, image_size)
    for obj in reversed(scene.objects):  # the distractor behind the main object: the label is never hidden
        _draw_object(canvas, obj)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return image.filter(ImageFilter.GaussianBlur(scene.blur)) if scene.blur > 0 else image


# ---- captions --------------------------------------------------------------------------------

MAIN_SIZE_WORDS = ("large", "big", "huge", "")
DISTRACTOR_SIZE_WORDS = ("small", "little", "tiny")
UNNAMED_SHAPE_WORDS = ("shape", "object", "figure", "thing")
PATTERN_WORDS = {
    "solid": ("plain", "solid", "flat"),
    "stripes": ("striped", "stripy"),
    "checks": ("checked", "checkered", "chequered"),
    "dots": ("dotted", "spotted", "polka-dot"),
    "noise_gradient": ("mottled", "grainy", "noisy"),
}
CENTRE_WORDS = ("in the middle", "near the centre", "in the centre", "", "")
MAIN_TEMPLATES = (
    "{article} {size} {colour} {shape} {where}",
    "{article} {size} {shape} in {colour} {where}",
    "{article} {colour} {shape} {where}",
)
MAIN_TEMPLATES_NO_COLOUR = ("{article} {size} {shape} {where}", "{article} {shape} {where}")
SENTENCE_TEMPLATES = (
    "{objects}, on {background}",
    "{objects} on {background}",
    "a picture of {objects} on {background}",
    "an image showing {objects} against {background}",
    "there is {objects} on {background}",
    "{background} with {objects}",
    "{objects}; the background is {pattern} {colour}",
    "{Background}: {objects}",
)


def _article(rng: np.random.Generator, next_word: str, allow_one: bool = True) -> str:
    if allow_one and rng.random() < 0.1:
        return "one"
    return "an" if next_word[0] in "aeiou" else "a"


def _squash(text: str) -> str:
    return " ".join(text.split())


def _describe_main(rng: np.random.Generator, obj: SceneObject) -> str:
    shape = obj.shape if rng.random() < SHAPE_NAMED else str(rng.choice(UNNAMED_SHAPE_WORDS))
    template = str(rng.choice(MAIN_TEMPLATES if rng.random() < COLOUR_NAMED else MAIN_TEMPLATES_NO_COLOUR))
    size = str(rng.choice(MAIN_SIZE_WORDS))
    first = _squash(template.format(article="", size=size, colour=obj.colour, shape=shape, where="")).split()[0]
    text = template.format(article=_article(rng, first), size=size, colour=obj.colour, shape=shape,
                           where=str(rng.choice(CENTRE_WORDS)))
    return _squash(text)


def _describe_distractor(rng: np.random.Generator, obj: SceneObject) -> str:
    size = str(rng.choice(DISTRACTOR_SIZE_WORDS))
    colour = obj.colour if rng.random() < COLOUR_NAMED else ""
    return _squash(f"{_article(rng, size)} {size} {colour} {obj.shape} {rng.choice(('in the', 'at the'))} {obj.place} corner")


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of the scene: the main object (its shape named in most captions), any distractor, the background.

    The distractor is described before the main object in a third of the captions, so the first
    shape named is not always the label.
    """
    phrases = [_describe_main(rng, scene.objects[0])]
    for distractor in scene.objects[1:]:
        phrase = _describe_distractor(rng, distractor)
        phrases.insert(0 if rng.random() < 1 / 3 else len(phrases), phrase)
    objects = phrases[0] if len(phrases) == 1 else f"{phrases[0]} {rng.choice(['and', 'next to', 'with'])} {phrases[1]}"
    pattern = str(rng.choice(PATTERN_WORDS[scene.background.pattern]))
    colour = scene.background.colour if rng.random() < COLOUR_NAMED else ""
    background = _squash(f"{_article(rng, pattern, allow_one=False)} {pattern} {colour} background")
    caption = str(rng.choice(SENTENCE_TEMPLATES)).format(
        objects=objects, background=background, Background=background[0].upper() + background[1:],
        pattern=pattern, colour=colour,
    )
    caption = _squash(caption)
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    if rng.random() < 0.3:
        caption += "."
    return caption


# ---- samples and outputs ---------------------------------------------------------------------

def render_sample(config: SyntheticConfig, split: str, index: int, main_shape: str | None = None) -> SyntheticSample:
    """Sample ``index`` of ``split``: a pure function of (config, split, index, main_shape)."""
    scene = sample_scene(config, split, index, main_shape)
    caption_stream = _seed_sequence(config, split, index, main_shape).spawn(2)[1]
    caption = caption_scene(scene, np.random.default_rng(caption_stream))
    metadata = {
        "label": scene.label,
        "label_name": scene.objects[0].shape,
        # JSON-native (lists, not tuples), so the metadata equals what its JSON reads back as
        "objects": [{**dataclasses.asdict(o), "rgb": list(o.rgb)} for o in scene.objects],
        "background": {**dataclasses.asdict(scene.background), "rgb": list(scene.background.rgb)},
        "blur": scene.blur,
        "seed": config.seed,
        "split": split,
        "index": index,
        "width": config.image_size,
        "height": config.image_size,
    }
    return SyntheticSample(
        image=draw_scene(scene, config.image_size),
        caption=caption,
        label=scene.label,
        label_name=scene.objects[0].shape,
        metadata=metadata,
    )


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes at quality 95; libjpeg is deterministic, so equal images give equal bytes."""
    buffer = io.BytesIO()
    # 4:4:4 chroma: the 4:2:0 default would smear a 32-px image's colours across 2-px blocks.
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


# Defects of web-crawled pairs that the captioned split can carry, each named after the
# data_filtering rule (at its default settings) that must catch it.
DEFECTS: tuple[str, ...] = (
    "missing_caption", "invalid_caption", "empty_caption", "undecodable_image",
    "too_small", "aspect_ratio", "exact_duplicate", "near_duplicate",
)
def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resized(image: Image.Image, scale: float) -> Image.Image:
    side = round(image.size[0] * scale)
    return image.resize((side, side), Image.BICUBIC)


def _cropped(image: Image.Image, fraction: float) -> Image.Image:
    side = image.size[0]
    cut = fraction * side
    return image.resize((side, side), Image.BICUBIC, box=(cut, cut, side - cut, side - cut))


# How a planted near duplicate is made from the previous clean sample's image (its JSON's
# ``near_duplicate_of`` and ``transform``): the edits a crawl meets, at sizes the filter's rule must catch.
_NEAR_DUPLICATE_EDITS = {
    "jpeg_q70": lambda image: _jpeg(image, 70),
    "jpeg_q85": lambda image: _jpeg(image, 85),
    "resize_1.5x": lambda image: encode_jpeg(_resized(image, 1.5)),
    "resize_0.75x_back": lambda image: encode_jpeg(_resized(_resized(image, 0.75), 1 / 0.75)),
    "crop_3pct": lambda image: encode_jpeg(_cropped(image, 0.03)),
    "brightness_0.9": lambda image: encode_jpeg(ImageEnhance.Brightness(image).enhance(0.9)),
    "brightness_1.1": lambda image: encode_jpeg(ImageEnhance.Brightness(image).enhance(1.1)),
    "contrast_0.9": lambda image: encode_jpeg(ImageEnhance.Contrast(image).enhance(0.9)),
    "contrast_1.1": lambda image: encode_jpeg(ImageEnhance.Contrast(image).enhance(1.1)),
}
NEAR_DUPLICATE_TRANSFORMS: tuple[str, ...] = tuple(_NEAR_DUPLICATE_EDITS)


def near_duplicate_of(image: Image.Image, transform: str) -> bytes:
    """Image bytes of ``image`` edited the way ``transform`` names (one of ``NEAR_DUPLICATE_TRANSFORMS``)."""
    if transform not in _NEAR_DUPLICATE_EDITS:
        raise ValueError(f"unknown near-duplicate transform {transform!r}; choose from {NEAR_DUPLICATE_TRANSFORMS}")
    return _NEAR_DUPLICATE_EDITS[transform](image)


def _plant_defect(sample: dict, defect: str, image: Image.Image, previous_jpg: bytes) -> None:
    """Spoil ``sample`` in place the way ``defect`` names (``near_duplicate`` is planted by the caller)."""
    side = image.size[0]
    if defect == "missing_caption":
        del sample["txt"]
    elif defect == "invalid_caption":
        sample["txt"] = sample["txt"].encode("utf-16")  # a BOM and NUL bytes: not UTF-8
    elif defect == "empty_caption":
        sample["txt"] = " \n"
    elif defect == "undecodable_image":
        sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2]  # a download cut short
    elif defect == "too_small":
        sample["jpg"] = encode_jpeg(image.resize((side // 2, side // 2), Image.LANCZOS))
    elif defect == "aspect_ratio":
        sample["jpg"] = encode_jpeg(image.resize((4 * side, side), Image.LANCZOS))
    elif defect == "exact_duplicate":
        sample["jpg"] = previous_jpg  # the same file crawled under another URL
    else:
        raise ValueError(f"unknown defect {defect!r}; choose from {DEFECTS}")


def iter_captioned_samples(
    config: SyntheticConfig, count: int, split: str = "train", defect_fraction: float = 0.0,
) -> Iterator[dict]:
    """WebDataset samples ``{"__key__", "jpg", "txt", "json"}`` for indices ``0 .. count-1``.

    A ``defect_fraction`` of the samples carry one of ``DEFECTS`` (named in their JSON's
    ``defect``), so that the filtering stage has real work on the embedded data. A near duplicate
    replaces the sample's image with an edited copy of the previous clean sample's image (its
    JSON names which and how: ``near_duplicate_of``, ``transform``).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must be in [0, 1], got {defect_fraction}")
    previous_jpg, previous_image, previous_key = None, None, None
    for index in range(count):
        sample = render_sample(config, split, index)
        jpg = encode_jpeg(sample.image)
        record = {"__key__": f"{split}_{index:08d}", "jpg": jpg, "txt": sample.caption}
        metadata = dict(sample.metadata)
        rng = np.random.default_rng(_seed_sequence(config, split, index, None).spawn(3)[2])
        if rng.random() < defect_fraction:
            candidates = DEFECTS if previous_jpg is not None else DEFECTS[:-2]
            metadata["defect"] = str(rng.choice(candidates))
            if metadata["defect"] == "near_duplicate":
                metadata["transform"] = str(rng.choice(NEAR_DUPLICATE_TRANSFORMS))
                metadata["near_duplicate_of"] = previous_key
                record["jpg"] = near_duplicate_of(previous_image, metadata["transform"])
            else:
                _plant_defect(record, metadata["defect"], sample.image, previous_jpg)
        else:
            previous_jpg, previous_image, previous_key = jpg, sample.image, record["__key__"]
        record["json"] = json.dumps(metadata, sort_keys=True)
        yield record


def write_captioned_shards(
    output_dir: str | Path, config: SyntheticConfig, count: int, samples_per_shard: int, split: str = "train",
    defect_fraction: float = 0.0,
) -> list[ShardInfo]:
    """Write ``count`` captioned samples as ``00000.tar, 00001.tar, ...``; the folder is replaced atomically."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    with atomic_path(output_dir) as tmp:
        return write_shards(tmp, iter_captioned_samples(config, count, split, defect_fraction), samples_per_shard)


def write_labelled_folder(root: str | Path, config: SyntheticConfig, train_per_class: int, val_per_class: int) -> dict:
    """Write a class-balanced ImageNet-style folder ``root/{train,val}/<shape>/<shape>_<i>.JPEG``.

    Each image's main object is forced to its folder's shape. The folder is built under a
    temporary name and renamed onto ``root`` at the end. Returns the counts per split and class.
    """
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    per_class = {"train": train_per_class, "val": val_per_class}
    with atomic_path(root) as tmp:
        for split, count in per_class.items():
            for shape in SHAPES:
                class_dir = tmp / split / shape
                class_dir.mkdir(parents=True)
                for index in range(count):
                    image = render_sample(config, split, index, main_shape=shape).image
                    (class_dir / f"{shape}_{index:06d}.JPEG").write_bytes(encode_jpeg(image))
    return {
        "classes": sorted(SHAPES),
        "image_size": config.image_size,
        "seed": config.seed,
        **{split: {shape: count for shape in sorted(SHAPES)} for split, count in per_class.items()},
    }
