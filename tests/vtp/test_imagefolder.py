import collections
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from vtp_kedro.vtp.data.imagefolder import (
    LabelledImageFolder,
    UnreadableImageError,
    cropped_batches,
    decode_image_file,
    iter_labelled_images,
)
from vtp_kedro.vtp.synthetic.generator import SHAPES, SyntheticConfig, write_labelled_folder


def _image_bytes(fmt: str, colour=(200, 30, 30), mode="RGB", size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def _noise_jpeg() -> bytes:
    # Noise does not compress, so half of the file is half of the scan data: a real truncation.
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


BAD_FILES = {
    "empty.JPEG": (b"", "empty_file"),
    "truncated.JPEG": (_noise_jpeg()[: len(_noise_jpeg()) // 2], "truncated"),
    "text.JPEG": (b"this is a caption, not an image\n" * 4, "not_an_image"),
}


@pytest.fixture
def folder(tmp_path):
    """train/cat: 2 good images (+ a non-image file that is ignored); train/dog: 1 good, 3 bad."""
    root = tmp_path / "images"
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    cat.mkdir(parents=True)
    dog.mkdir(parents=True)
    (cat / "a.JPEG").write_bytes(_image_bytes("JPEG"))
    (cat / "b.png").write_bytes(_image_bytes("PNG", mode="L"))  # greyscale: read back as RGB
    (cat / "notes.txt").write_text("not listed")
    (dog / "c.webp").write_bytes(_image_bytes("WEBP", colour=(10, 200, 10)))
    for name, (data, _) in BAD_FILES.items():
        (dog / name).write_bytes(data)
    return root


def test_classes_and_labels(folder):
    dataset = LabelledImageFolder(folder, "train")
    assert dataset.classes == ["cat", "dog"] and dataset.class_to_idx == {"cat": 0, "dog": 1}
    names = [(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1], label) for p, label in dataset.samples]
    assert names == [("cat/a.JPEG", 0), ("cat/b.png", 0), ("dog/c.webp", 1), ("dog/empty.JPEG", 1),
                     ("dog/text.JPEG", 1), ("dog/truncated.JPEG", 1)]
    image, label = dataset[1]
    assert image.mode == "RGB" and image.size == (12, 10) and label == 0
    tensor, label = LabelledImageFolder(folder, "train", transform=pil_to_tensor)[2]
    assert tensor.shape == (3, 10, 12) and tensor.dtype == torch.uint8 and label == 1
    assert tensor[1].float().mean() > 150  # the green webp, decoded


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_getitem_on_a_bad_file_names_it(folder, name):
    dataset = LabelledImageFolder(folder, "train")
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith(name))
    with pytest.raises(UnreadableImageError, match=name) as info:
        dataset[index]
    assert info.value.reason == BAD_FILES[name][1]


def test_iteration_skips_and_counts_bad_files(folder):
    errors = collections.Counter()
    items = list(iter_labelled_images(folder, "train", errors))
    assert [(key, label) for key, _, label in items] == [("cat/a", 0), ("cat/b", 0), ("dog/c", 1)]
    assert all(image.mode == "RGB" for _, image, _ in items)
    assert errors == collections.Counter(reason for _, reason in BAD_FILES.values())
    assert len(list(iter_labelled_images(folder, "train"))) == 3  # counting is optional


def test_truncation_is_detected_in_every_format(tmp_path):
    for fmt in ("JPEG", "PNG"):
        pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 3 // 4])
        with pytest.raises(UnreadableImageError, match="truncated"):
            decode_image_file(path)


def test_missing_root_or_split_fails_naming_the_path(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LabelledImageFolder(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="val"):
        LabelledImageFolder(folder, "val")
    with pytest.raises(FileNotFoundError, match="val"):
        next(iter_labelled_images(folder, "val"))


def test_empty_split_fails_naming_the_path(folder):
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match=r"images/empty"):
        LabelledImageFolder(folder, "empty")
    (folder / "empty" / "cat").mkdir()
    (folder / "empty" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"images/empty"):
        LabelledImageFolder(folder, "empty")


def test_reads_the_generated_labelled_folder(tmp_path):
    write_labelled_folder(tmp_path / "shapes", SyntheticConfig(image_size=16), train_per_class=2, val_per_class=1)
    dataset = LabelledImageFolder(tmp_path / "shapes", "val")
    assert dataset.classes == sorted(SHAPES) and len(dataset) == len(SHAPES)
    errors = collections.Counter()
    items = list(iter_labelled_images(tmp_path / "shapes", "train", errors))
    assert not errors and len(items) == 2 * len(SHAPES)
    for key, image, label in items:
        assert key.split("/")[0] == dataset.classes[label] and image.size == (16, 16)


def test_folder_class_indices_equal_shard_label_indices(tmp_path) -> None:
    write_labelled_folder(tmp_path / "folder", SyntheticConfig(), train_per_class=1, val_per_class=1)
    folder = LabelledImageFolder(tmp_path / "folder", "train")
    assert folder.classes == list(SHAPES)
    assert all(folder.classes[label] == Path(path).parent.name for path, label in folder.samples)


def test_cropped_batches_take_the_first_images_of_each_class(image_root):
    batches = list(cropped_batches(image_root, "train", 16, batch_size=4, per_class=2))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 16, 16)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.cat([b[1] for b in cropped_batches(image_root, "train", 16, 4, max_images=7)]).tolist() == \
        [0] * 5 + [1] * 2
