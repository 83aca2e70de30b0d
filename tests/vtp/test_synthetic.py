import collections
import dataclasses
import io
import json
import tarfile

import numpy as np
import pydantic
import pytest
from PIL import Image

from vtp_kedro.vtp.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    SyntheticConfig,
    draw_scene,
    encode_jpeg,
    iter_captioned_samples,
    render_sample,
    sample_scene,
    write_captioned_shards,
    write_labelled_folder,
)


@pytest.mark.parametrize(
    "overrides, field",
    [({"image_size": 8}, "image_size"), ({"max_objects": 0}, "max_objects"), ({"max_objects": 4}, "max_objects"),
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
    assert len(COLOURS) >= 8 and len(POSITIONS) == 9
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
    for index in range(300):
        sample = render_sample(config, "train", index)
        caption, meta = sample.caption.lower(), sample.metadata
        objects = meta["objects"]
        counts[len(objects)] += 1
        for obj in objects:
            assert obj["shape"] in caption and obj["colour"] in caption and obj["position"] in caption
        assert meta["background"]["colour"] in caption and "background" in caption
        # The label is the first-described object, and it is strictly the largest.
        assert min(caption.find(s) for s in SHAPES if s in caption) == caption.find(sample.label_name)
        assert sample.label == SHAPES.index(objects[0]["shape"])
        assert all(SIZES.index(o["size"]) < SIZES.index(objects[0]["size"]) for o in objects[1:])
        assert len({o["position"] for o in objects}) == len(objects)
        assert all(o["colour"] != meta["background"]["colour"] for o in objects)
        shapes[sample.label_name] += 1
        patterns.add(meta["background"]["pattern"])
        openings.add(" ".join(caption.split()[:2]))
    assert set(shapes) == set(SHAPES) and min(shapes.values()) >= 10
    assert patterns == set(BACKGROUNDS)
    assert set(counts) == {1, 2, 3}
    assert len(openings) >= 10  # phrasings vary


def test_max_objects_bounds_the_object_count():
    config = SyntheticConfig(max_objects=1)
    assert all(len(render_sample(config, "train", i).metadata["objects"]) == 1 for i in range(50))


def test_forcing_the_main_shape():
    config = SyntheticConfig()
    for label, shape in enumerate(SHAPES):
        sample = render_sample(config, "val", 4, main_shape=shape)
        assert sample.label == label and sample.label_name == shape
        assert shape in sample.caption
        assert all(o["shape"] != shape for o in sample.metadata["objects"][1:])
    with pytest.raises(ValueError, match="pentagon"):
        render_sample(config, "val", 4, main_shape="pentagon")
    with pytest.raises(ValueError, match="-1"):
        render_sample(config, "val", -1)


def test_each_drawn_object_lies_in_its_stated_cell_in_its_stated_colour():
    """The drawing matches the caption: each object changes only pixels of its own grid cell."""
    size, cell = 48, 16
    for index in range(40):
        scene = sample_scene(SyntheticConfig(image_size=size), "train", index)
        background = _pixels(draw_scene(dataclasses.replace(scene, objects=()), size))
        for obj in scene.objects:
            alone = _pixels(draw_scene(dataclasses.replace(scene, objects=(obj,)), size))
            changed = np.abs(alone - background).sum(axis=-1)
            rows, cols = np.nonzero(changed > 60)
            assert rows.size >= 4, (index, obj)
            row, col = divmod(POSITIONS.index(obj.position), 3)
            # One pixel of slack: LANCZOS rings just outside a sharp edge.
            assert row * cell - 1 <= rows.min() and rows.max() <= (row + 1) * cell, (index, obj)
            assert col * cell - 1 <= cols.min() and cols.max() <= (col + 1) * cell, (index, obj)
            core = alone[changed >= np.percentile(changed, 99.5)]
            distance = np.linalg.norm(np.median(core, axis=0) - np.asarray(COLOURS[obj.colour]))
            assert distance < 60, (index, obj, distance)


def test_every_shape_is_visible_at_32_pixels():
    config = SyntheticConfig(image_size=32)
    for shape in SHAPES:
        scene = sample_scene(config, "train", 0, main_shape=shape)
        small = dataclasses.replace(scene.objects[0], size="small")
        background = _pixels(draw_scene(dataclasses.replace(scene, objects=()), 32))
        drawn = _pixels(draw_scene(dataclasses.replace(scene, objects=(small,)), 32))
        assert (np.abs(drawn - background).sum(axis=-1) > 60).sum() >= 4, shape


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


def test_main_object_size_floor():
    """By default the main (labelled) object is large; ``min_main_size`` lowers the floor."""
    sizes = {"large": set(), "small": set()}
    for floor in sizes:
        config = SyntheticConfig(min_main_size=floor)
        for index in range(200):
            objects = sample_scene(config, "train", index).objects
            sizes[floor].add((len(objects) > 1, objects[0].size))
            assert all(SIZES.index(o.size) < SIZES.index(objects[0].size) for o in objects[1:])
    assert sizes["large"] == {(False, "large"), (True, "large")}
    # Alone, a main object may take any size at or above the floor; with company it is never the smallest.
    assert sizes["small"] == {(False, "small"), (False, "medium"), (False, "large"), (True, "medium"), (True, "large")}
    with pytest.raises(pydantic.ValidationError, match="min_main_size"):
        SyntheticConfig(min_main_size="huge")
