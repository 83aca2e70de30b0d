"""The embedded captioned-image dataset: procedural scenes of coloured shapes with captions.

No image can be downloaded here, so the default data is drawn. A scene holds one to three
objects (shape, colour, size, a cell of a 3x3 grid) on a textured background, and comes
with a natural-language caption ("a large red star in the top left and a small blue ring,
on a striped grey background") and a class label: the shape of the main object, which is
the largest one and is always described first.

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
from typing import Literal

import numpy as np
import pydantic
from PIL import Image, ImageDraw

from vtp_kedro.vtp.config import Config
from vtp_kedro.vtp.data.shards import ShardInfo, write_shards
from vtp_kedro.vtp.io import atomic_path

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
SIZES: tuple[str, ...] = ("small", "medium", "large")
# Row-major cells of the 3x3 grid.
POSITIONS: tuple[str, ...] = (
    "top left", "top centre", "top right",
    "centre left", "centre", "centre right",
    "bottom left", "bottom centre", "bottom right",
)

# Side of an object's bounding box as a fraction of its grid cell.
# Large and medium differ by a factor 0.65 / 0.95: a distractor must look clearly smaller than the main object.
SIZE_FRACTION = {"small": 0.45, "medium": 0.65, "large": 0.95}
JPEG_QUALITY = 95  # img2dataset's default
SUPERSAMPLE = 4  # drawn at 4x the output side, then LANCZOS-downsampled: anti-aliased edges
MAX_ROTATION = 15.0  # degrees; more would turn a square into a diamond and a cross into an x
MIN_CONTRAST = 120.0  # RGB distance between an object colour and both background tones
TEXTURE_PERIODS = (1 / 8, 1 / 6, 1 / 5)  # stripe/check/dot period as a fraction of the image side
TEXTURE_ANGLES = (0, 45, 90, 135)
NOISE_STD = 12.0  # grey levels of the noise-gradient background's per-pixel noise


class SyntheticConfig(Config):
    """Resolution, seed and scene complexity of the generated dataset.

    ``min_main_size`` is the smallest size the main (labelled) object may take. The default,
    ``large``, draws every main object at ``SIZE_FRACTION["large"]`` of its cell (about 10 px of
    a 32-px image): at 32 px, with 300 images per class, a small CNN reads ``medium`` main
    objects (7 px) among distractors at 66% and ``large`` ones at 86%, and 95% with 500 per
    class (README, "The embedded dataset"). The other objects are always strictly smaller.
    """

    image_size: int = pydantic.Field(32, ge=16)
    seed: int = pydantic.Field(0, ge=0)
    max_objects: int = pydantic.Field(3, ge=1, le=3)
    min_main_size: Literal["small", "medium", "large"] = "large"


@dataclass(frozen=True)
class SceneObject:
    """One object; ``offset_x/y`` in [-1, 1] move it inside its cell, in units of the cell's free margin."""

    shape: str
    colour: str
    size: str
    position: str
    rotation: float
    offset_x: float
    offset_y: float


@dataclass(frozen=True)
class Background:
    """A textured background: ``period`` is a fraction of the image side, ``angle`` in degrees."""

    pattern: str
    colour: str
    angle: int
    period: float
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw an image; ``objects[0]`` is the main (largest) object."""

    objects: tuple[SceneObject, ...]
    background: Background

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


def _second_tone(colour: str) -> np.ndarray:
    """The texture's other tone: the background colour moved 30% towards white (dark) or black (light)."""
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    target = 255.0 if luminance < 140 else 0.0
    return rgb + 0.3 * (target - rgb)


@functools.cache
def _contrasting_colours(background: str) -> tuple[str, ...]:
    tones = (np.asarray(COLOURS[background], dtype=np.float64), _second_tone(background))
    return tuple(
        name for name, rgb in COLOURS.items()
        if name != background and min(np.linalg.norm(np.asarray(rgb) - t) for t in tones) >= MIN_CONTRAST
    )


def sample_scene(config: SyntheticConfig, split: str, index: int, main_shape: str | None = None) -> Scene:
    """Draw the scene description of sample ``index`` of ``split`` (optionally forcing the main shape)."""
    scene_rng = np.random.default_rng(_seed_sequence(config, split, index, main_shape).spawn(2)[0])
    background = Background(
        pattern=str(scene_rng.choice(BACKGROUNDS)),
        colour=str(scene_rng.choice(list(COLOURS))),
        angle=int(scene_rng.choice(TEXTURE_ANGLES)),
        period=float(scene_rng.choice(TEXTURE_PERIODS)),
        noise_seed=int(scene_rng.integers(2**31)),
    )
    count = int(scene_rng.integers(1, config.max_objects + 1))
    # The main object is strictly the largest when there are several, so the label is visible in the image.
    main_sizes = SIZES[SIZES.index(config.min_main_size):]
    if count > 1:
        main_sizes = tuple(s for s in main_sizes if s != SIZES[0])  # with company it cannot be the smallest
    main_size = str(scene_rng.choice(main_sizes))
    smaller = SIZES[: SIZES.index(main_size)]
    sizes = [main_size] + [str(scene_rng.choice(smaller)) for _ in range(count - 1)]
    main = main_shape if main_shape is not None else str(scene_rng.choice(SHAPES))
    # Secondary shapes differ from the main one so the label stays unambiguous.
    others = scene_rng.choice([s for s in SHAPES if s != main], size=count - 1, replace=False)
    shapes = [main, *map(str, others)]
    colours = scene_rng.choice(_contrasting_colours(background.colour), size=count, replace=False)
    cells = scene_rng.choice(len(POSITIONS), size=count, replace=False)  # distinct cells: nothing hidden
    objects = tuple(
        SceneObject(
            shape=shapes[i],
            colour=str(colours[i]),
            size=sizes[i],
            position=POSITIONS[int(cells[i])],
            rotation=round(float(scene_rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 2),
            offset_x=round(float(scene_rng.uniform(-1, 1)), 3),
            offset_y=round(float(scene_rng.uniform(-1, 1)), 3),
        )
        for i in range(count)
    )
    return Scene(objects=objects, background=background)


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
    cell = side / 3
    row, col = divmod(POSITIONS.index(obj.position), 3)
    half = SIZE_FRACTION[obj.size] * cell / 2
    margin = cell / 2 - half
    return (col + 0.5) * cell + obj.offset_x * margin, (row + 0.5) * cell + obj.offset_y * margin, half


def _draw_object(canvas: Image.Image, obj: SceneObject) -> None:
    cx, cy, half = _object_box(obj, canvas.width)
    colour = COLOURS[obj.colour]
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
    base = COLOURS[background.colour]
    if background.pattern == "solid":
        return Image.new("RGB", (side, side), base)
    tone = _second_tone(background.colour).astype(np.float32)
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
    for obj in scene.objects:
        _draw_object(canvas, obj)
    return canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)


# ---- captions --------------------------------------------------------------------------------

SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
PATTERN_WORDS = {
    "solid": ("plain", "solid", "flat"),
    "stripes": ("striped", "stripy"),
    "checks": ("checked", "checkered", "chequered"),
    "dots": ("dotted", "spotted", "polka-dot"),
    "noise_gradient": ("mottled", "grainy", "noisy"),
}
POSITION_PREPOSITIONS = ("in the", "at the", "towards the")
OBJECT_TEMPLATES = (
    "{article} {size} {colour} {shape} {where}",
    "{article} {size} {shape} in {colour} {where}",
    "{article} {colour} {shape} of {plain_size} size {where}",
)
SENTENCE_TEMPLATES = (
    "{objects}, on {background}",
    "{objects} on {background}",
    "a picture of {objects} on {background}",
    "an image showing {objects} against {background}",
    "there is {objects} on {background}",
    "{background} with {objects}",
    "{objects}; the background is {pattern} {colour}",
)


def _article(rng: np.random.Generator, next_word: str, allow_one: bool = True) -> str:
    if allow_one and rng.random() < 0.1:
        return "one"
    return "an" if next_word[0] in "aeiou" else "a"


def _describe_object(rng: np.random.Generator, obj: SceneObject) -> str:
    template = str(rng.choice(OBJECT_TEMPLATES))
    size = str(rng.choice(SIZE_WORDS[obj.size]))
    article = _article(rng, size if template.startswith("{article} {size}") else obj.colour)
    where = f"{rng.choice(POSITION_PREPOSITIONS)} {obj.position}"
    return template.format(
        article=article, size=size, plain_size=obj.size, colour=obj.colour, shape=obj.shape, where=where,
    )


def _join(rng: np.random.Generator, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return f"{phrases[0]} {rng.choice(['and', 'next to', 'with'])} {phrases[1]}"
    style = int(rng.integers(3))
    if style == 0:
        return f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    if style == 1:
        return f"{phrases[0]}, {phrases[1]}, and {phrases[2]}"
    return f"{phrases[0]} along with {phrases[1]} and {phrases[2]}"


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming every object's size, colour, shape and cell and the background; main object first."""
    secondaries = list(scene.objects[1:])
    rng.shuffle(secondaries)  # the main object stays first: the label is the first-described shape
    objects = _join(rng, [_describe_object(rng, o) for o in (scene.objects[0], *secondaries)])
    pattern = str(rng.choice(PATTERN_WORDS[scene.background.pattern]))
    background = f"{_article(rng, pattern, allow_one=False)} {pattern} {scene.background.colour} background"
    caption = str(rng.choice(SENTENCE_TEMPLATES)).format(
        objects=objects, background=background, pattern=pattern, colour=scene.background.colour,
    )
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
        "objects": [dataclasses.asdict(o) for o in scene.objects],
        "background": dataclasses.asdict(scene.background),
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
    "too_small", "aspect_ratio", "exact_duplicate",
)


def _plant_defect(sample: dict, defect: str, image: Image.Image, previous_jpg: bytes) -> None:
    """Spoil ``sample`` in place the way ``defect`` names."""
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
    ``defect``), so that the filtering stage has real work on the embedded data.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must be in [0, 1], got {defect_fraction}")
    previous_jpg = None
    for index in range(count):
        sample = render_sample(config, split, index)
        jpg = encode_jpeg(sample.image)
        record = {"__key__": f"{split}_{index:08d}", "jpg": jpg, "txt": sample.caption}
        metadata = dict(sample.metadata)
        rng = np.random.default_rng(_seed_sequence(config, split, index, None).spawn(3)[2])
        if rng.random() < defect_fraction:
            candidates = DEFECTS if previous_jpg is not None else DEFECTS[:-1]
            metadata["defect"] = str(rng.choice(candidates))
            _plant_defect(record, metadata["defect"], sample.image, previous_jpg)
        else:
            previous_jpg = jpg
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
