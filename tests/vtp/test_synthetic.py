import collections
import dataclasses
import io
import json
import tarfile

import numpy as np
import pydantic
import pytest
from PIL import Image

from vtp_kedro.vtp.synthetic.generator import (
    BACKGROUNDS,
    COLOURS,
    CORNERS,
    DISTRACTOR_SIZE,
    MAIN_SIZE,
    NEAR_DUPLICATE_TRANSFORMS,
    SHAPES,
    SyntheticConfig,
    colour_name,
    draw_scene,
    encode_jpeg,
    iter_captioned_samples,
    near_duplicate_of,
    render_sample,
    sample_scene,
    write_captioned_shards,
    write_labelled_folder,
)


@pytest.mark.parametrize(
    "overrides, field",
    [({"image_size": 8}, "image_size"), ({"max_objects": 0}, "max_objects"), ({"max_objects": 3}, "max_objects"),
     ({"seed": -1}, "seed"), ({"colour": "red"}, "colour")],
)
def test_config_rejects_impossible_values_naming_the_field(overrides, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        SyntheticConfig(**overrides)


def test_vocabulary():
    assert set(SHAPES) == {
        "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart", "diamond", "crescent",
    }
    assert list(SHAPES) == sorted(SHAPES)  # label indices match the sorted folder classes
    assert len(COLOURS) >= 8 and len(CORNERS) == 4
    assert set(BACKGROUNDS) == {"solid", "stripes", "checks", "dots", "noise_gradient"}


@pytest.mark.parametrize("size", [16, 32, 48])
def test_sample_has_requested_size_and_consistent_fields(size):
    sample = render_sample(SyntheticConfig(image_size=size), "train", 3)
    assert sample.image.mode == "RGB" and sample.image.size == (size, size)
    assert (sample.metadata["width"], sample.metadata["height"]) == (size, size)
    assert sample.label == sample.metadata["label"] == SHAPES.index(sample.label_name)
    assert sample.metadata["label_name"] == sample.label_name == sample.metadata["objects"][0]["shape"]
    assert (sample.metadata["seed"], sample.metadata["split"], sample.metadata["index"]) == (0, "train", 3)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_sample_is_a_pure_function_of_seed_split_and_index():
    config = SyntheticConfig()
    streamed = list(iter_captioned_samples(config, 8))
    alone = render_sample(config, "train", 6)  # regenerated on its own, out of order
    assert streamed[6]["jpg"] == encode_jpeg(alone.image)
    assert streamed[6]["txt"] == alone.caption
    assert json.loads(streamed[6]["json"]) == alone.metadata
    assert streamed[6]["__key__"] == "train_00000006"
    for other in (render_sample(config, "val", 6), render_sample(SyntheticConfig(seed=1), "train", 6),
                  render_sample(config, "train", 7)):
        assert not np.array_equal(_pixels(other.image), _pixels(alone.image))


def _read_tar(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_are_byte_identical_for_a_seed_and_differ_across_seeds(tmp_path):
    config = SyntheticConfig(seed=7)
    first = write_captioned_shards(tmp_path / "a", config, count=25, samples_per_shard=10)
    second = write_captioned_shards(tmp_path / "b", config, count=25, samples_per_shard=10)
    assert [i.samples for i in first] == [10, 10, 5]
    assert first == second
    for info in first:
        assert (tmp_path / "a" / info.name).read_bytes() == (tmp_path / "b" / info.name).read_bytes()
    other = write_captioned_shards(tmp_path / "c", SyntheticConfig(seed=8), count=25, samples_per_shard=10)
    assert all(a.sha256 != b.sha256 for a, b in zip(first, other))

    members = _read_tar(tmp_path / "a" / "00002.tar")
    assert sorted(members) == [f"train_{i:08d}.{ext}" for i in range(20, 25) for ext in ("jpg", "json", "txt")]
    image = Image.open(io.BytesIO(members["train_00000020.jpg"]))
    assert image.format == "JPEG" and image.size == (32, 32)
    assert json.loads(members["train_00000020.json"])["index"] == 20
    assert members["train_00000020.txt"].decode("utf-8") == render_sample(config, "train", 20).caption


def test_rewriting_shards_replaces_the_folder(tmp_path):
    write_captioned_shards(tmp_path / "s", SyntheticConfig(), count=30, samples_per_shard=10)
    write_captioned_shards(tmp_path / "s", SyntheticConfig(), count=5, samples_per_shard=10)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary left behind


def test_captions_describe_the_metadata_and_vocabulary_is_covered():
    config = SyntheticConfig()
    shapes, patterns, openings, counts = collections.Counter(), set(), set(), collections.Counter()
    named, coloured, label_first = 0, 0, 0
    for index in range(400):
        sample = render_sample(config, "train", index)
        caption, meta = sample.caption.lower(), sample.metadata
        objects = meta["objects"]
        counts[len(objects)] += 1
        main = objects[0]
        named += main["shape"] in caption
        coloured += main["colour"] in caption
        for distractor in objects[1:]:  # a distractor is always named, with its corner
            assert distractor["shape"] in caption and f"{distractor['place']} corner" in caption
            assert distractor["size"] < main["size"] and distractor["shape"] != main["shape"]
        assert "background" in caption
        first = min((caption.find(s), s) for s in SHAPES if s in caption)[1] if any(s in caption for s in SHAPES) else None
        label_first += first == sample.label_name
        assert sample.label == SHAPES.index(main["shape"]) and main["colour"] == colour_name(main["rgb"])
        shapes[sample.label_name] += 1
        patterns.add(meta["background"]["pattern"])
        openings.add(" ".join(caption.split()[:2]))
    assert set(shapes) == set(SHAPES) and min(shapes.values()) >= 20
    assert patterns == set(BACKGROUNDS)
    assert set(counts) == {1, 2} and counts[2] > 0.8 * 400
    # The shape is named in most captions, not all; colours in a minority; the label is not always first.
    assert 0.75 * 400 <= named <= 0.95 * 400, named
    assert 0.2 * 400 <= coloured <= 0.5 * 400, coloured
    assert 0.5 * 400 <= label_first <= 0.9 * 400, label_first
    assert len(openings) >= 10  # phrasings vary


def test_max_objects_bounds_the_object_count():
    config = SyntheticConfig(max_objects=1)
    assert all(len(render_sample(config, "train", i).metadata["objects"]) == 1 for i in range(50))
    # The distractor is drawn last from the scene's stream: leaving it out changes nothing else.
    for index in range(20):
        alone, full = sample_scene(config, "train", index), sample_scene(SyntheticConfig(), "train", index)
        assert alone.objects[0] == full.objects[0] and alone.background == full.background
        assert alone.blur == full.blur


def test_forcing_the_main_shape():
    config = SyntheticConfig()
    for label, shape in enumerate(SHAPES):
        sample = render_sample(config, "val", 4, main_shape=shape)
        assert sample.label == label and sample.label_name == shape
        assert all(o["shape"] != shape for o in sample.metadata["objects"][1:])
    with pytest.raises(ValueError, match="pentagon"):
        render_sample(config, "val", 4, main_shape="pentagon")
    with pytest.raises(ValueError, match="-1"):
        render_sample(config, "val", -1)


def test_each_drawn_object_lies_in_its_box_in_its_colour():
    """The drawing matches the metadata: each object changes only pixels of its own bounding box
    (rotated shapes stay inside it), drawn in its colour; the distractor sits in its corner."""
    size = 48
    for index in range(40):
        scene = dataclasses.replace(sample_scene(SyntheticConfig(image_size=size), "train", index), blur=0.0)
        background = _pixels(draw_scene(dataclasses.replace(scene, objects=()), size))
        for obj in scene.objects:
            alone = _pixels(draw_scene(dataclasses.replace(scene, objects=(obj,)), size))
            changed = np.abs(alone - background).sum(axis=-1)
            rows, cols = np.nonzero(changed > 60)
            assert rows.size >= 4, (index, obj)
            half = obj.size * size / 2 * 2**0.5 + 1  # a rotated box's corners reach sqrt(2) of its half side
            assert obj.cy * size - half <= rows.min() and rows.max() <= obj.cy * size + half, (index, obj)
            assert obj.cx * size - half <= cols.min() and cols.max() <= obj.cx * size + half, (index, obj)
            core = alone[changed >= np.percentile(changed, 99.5)]
            assert np.linalg.norm(np.median(core, axis=0) - np.asarray(obj.rgb)) < 60, (index, obj)
            if obj.place != "centre":
                assert ("top" in obj.place) == (obj.cy < 0.5) and ("left" in obj.place) == (obj.cx < 0.5)


def test_every_shape_is_visible_at_32_pixels_even_as_the_smallest_distractor():
    config = SyntheticConfig(image_size=32)
    for shape in SHAPES:
        scene = dataclasses.replace(sample_scene(config, "train", 0, main_shape=shape), blur=0.0)
        small = dataclasses.replace(scene.objects[0], size=DISTRACTOR_SIZE[0])
        background = _pixels(draw_scene(dataclasses.replace(scene, objects=()), 32))
        drawn = _pixels(draw_scene(dataclasses.replace(scene, objects=(small,)), 32))
        assert (np.abs(drawn - background).sum(axis=-1) > 60).sum() >= 4, shape


def test_object_sizes_colours_and_blur_stay_in_their_ranges():
    sizes, blurred = [], 0
    for index in range(300):
        scene = sample_scene(SyntheticConfig(), "train", index)
        main = scene.objects[0]
        assert MAIN_SIZE[0] <= main.size <= MAIN_SIZE[1] and main.place == "centre"
        assert abs(main.cx - 0.5) <= (1 - main.size) / 2 and abs(main.cy - 0.5) <= (1 - main.size) / 2
        for distractor in scene.objects[1:]:
            assert DISTRACTOR_SIZE[0] <= distractor.size <= DISTRACTOR_SIZE[1] and distractor.place in CORNERS
        # every object stands out from both tones of its background
        for obj in scene.objects:
            assert np.linalg.norm(np.subtract(obj.rgb, scene.background.rgb)) >= 120
        sizes.append(main.size)
        blurred += scene.blur > 0
    assert max(sizes) - min(sizes) > 0.2 and 0.35 * 300 <= blurred <= 0.65 * 300


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_labelled_folder_is_class_balanced_deterministic_and_atomic(tmp_path):
    config = SyntheticConfig(seed=3)
    summary = write_labelled_folder(tmp_path / "a", config, train_per_class=3, val_per_class=2)
    assert summary["classes"] == sorted(SHAPES)
    assert summary["train"] == {s: 3 for s in SHAPES} and summary["val"] == {s: 2 for s in SHAPES}
    tree = _tree(tmp_path / "a")
    assert len(tree) == 10 * (3 + 2)
    for shape in SHAPES:
        assert sorted(k for k in tree if k.startswith(f"train/{shape}/")) == [
            f"train/{shape}/{shape}_{i:06d}.JPEG" for i in range(3)]
    assert tree["val/heart/heart_000001.JPEG"] == encode_jpeg(render_sample(config, "val", 1, main_shape="heart").image)
    assert Image.open(io.BytesIO(tree["train/star/star_000000.JPEG"])).size == (32, 32)

    write_labelled_folder(tmp_path / "b", config, train_per_class=3, val_per_class=2)
    assert _tree(tmp_path / "b") == tree
    write_labelled_folder(tmp_path / "b", SyntheticConfig(seed=4), train_per_class=1, val_per_class=1)
    rewritten = _tree(tmp_path / "b")
    assert len(rewritten) == 20  # the old folder was replaced, not merged
    assert all(rewritten[k] != tree[k] for k in rewritten)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_bad_counts_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match="val_per_class"):
        write_labelled_folder(tmp_path / "x", SyntheticConfig(), train_per_class=1, val_per_class=0)
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_captioned_shards(tmp_path / "y", SyntheticConfig(), count=4, samples_per_shard=0)
    with pytest.raises(ValueError, match="count"):
        write_captioned_shards(tmp_path / "y", SyntheticConfig(), count=0, samples_per_shard=4)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_defects_are_seeded_marked_and_leave_clean_samples_alone():
    import json as json_

    clean = list(iter_captioned_samples(SyntheticConfig(), 60))
    spoilt = list(iter_captioned_samples(SyntheticConfig(), 60, defect_fraction=0.5))
    assert spoilt == list(iter_captioned_samples(SyntheticConfig(), 60, defect_fraction=0.5))
    marked = [json_.loads(s["json"]).get("defect") for s in spoilt]
    assert 15 <= sum(d is not None for d in marked) <= 45
    for before, after, defect in zip(clean, spoilt, marked):
        if defect is None:
            assert before == after
        else:
            assert before != after and before["__key__"] == after["__key__"]
    with pytest.raises(ValueError, match="defect_fraction"):
        list(iter_captioned_samples(SyntheticConfig(), 1, defect_fraction=1.5))


def test_near_duplicate_defects_are_edited_copies_of_the_previous_clean_sample():
    samples = list(iter_captioned_samples(SyntheticConfig(), 400, defect_fraction=0.3))
    metadata = [json.loads(s["json"]) for s in samples]
    planted = [(i, m) for i, m in enumerate(metadata) if m.get("defect") == "near_duplicate"]
    assert planted and {m["transform"] for _, m in planted} <= set(NEAR_DUPLICATE_TRANSFORMS)
    for index, meta in planted:
        source = max(k for k in range(index) if "defect" not in metadata[k])
        assert meta["near_duplicate_of"] == samples[source]["__key__"]
        copy = np.asarray(Image.open(io.BytesIO(samples[index]["jpg"])).convert("RGB").resize((32, 32)), dtype=np.int16)
        original = _pixels(render_sample(SyntheticConfig(), "train", source).image)
        assert np.abs(copy - original).mean() < 20  # an edit of that image, not another scene
    image = render_sample(SyntheticConfig(), "train", 0).image
    sizes = {t: Image.open(io.BytesIO(near_duplicate_of(image, t))).size for t in NEAR_DUPLICATE_TRANSFORMS}
    assert sizes["resize_1.5x"] == (48, 48) and all(s == (32, 32) for t, s in sizes.items() if t != "resize_1.5x")
    # the crop cuts what its name says: 3% of 32 px off each side, about one pixel
    expected = image.resize((32, 32), Image.BICUBIC, box=(0.96, 0.96, 31.04, 31.04))
    assert near_duplicate_of(image, "crop_3pct") == encode_jpeg(expected)
    with pytest.raises(ValueError, match="sharpen"):
        near_duplicate_of(render_sample(SyntheticConfig(), "train", 0).image, "sharpen")
