import pytest
import torch

from vtp_kedro.vtp.data.imagefolder import load_labelled_split
from vtp_kedro.vtp.metrics.reference import SmallCNN, cnn_accuracy, train_cnn
from vtp_kedro.vtp.metrics.understanding import linear_probe, pixel_features
from vtp_kedro.vtp.synthetic.calibration import coarsened, render_labelled_split
from vtp_kedro.vtp.synthetic.generator import SHAPES, SyntheticConfig, write_labelled_folder


def test_rendered_split_equals_the_written_folder(tmp_path):
    config = SyntheticConfig(seed=5)
    write_labelled_folder(tmp_path / "f", config, train_per_class=2, val_per_class=1)
    for split, per_class in (("train", 2), ("val", 1)):
        read = load_labelled_split(tmp_path / "f", split)
        rendered = render_labelled_split(config, split, per_class)
        assert read.classes == rendered.classes == SHAPES
        assert torch.equal(read.labels, rendered.labels)
        assert torch.equal(read.images, rendered.images)
        assert read.images.dtype == torch.uint8 and read.images.shape == (10 * per_class, 3, 32, 32)
        assert read.chance == 0.1


def test_small_cnn_is_position_blind_and_sized_for_any_image():
    model = SmallCNN(10, width=8)
    for side in (32, 64):
        assert model(torch.randn(2, 3, side, side)).shape == (2, 10)


@pytest.fixture
def one_thread():
    # One thread: two intra-op threads on two cores that other work shares run many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_labels_of_the_default_generator_are_visible_to_a_small_cnn(one_thread):
    """A generator change that hides the main object (too small, too faint, lost among
    distractors) fails here: a small CNN trained from scratch on a small default split
    (2000 images; ~90% val top-1, ~40 s on one core) must read the labels far above chance
    (10%), while raw pixels stay a poor linear template."""
    config = SyntheticConfig()  # the generator's defaults, as data_generation uses them
    train = render_labelled_split(config, "train", 200)
    val = render_labelled_split(config, "val", 20)
    result = train_cnn(train, val, epochs=20, batch_size=32, width=16, seed=0)
    assert result.val_top1 >= 0.75, result
    # the class survives a 2x coarser image: the CNN of the originals still reads most of them
    coarse = cnn_accuracy(result.model, coarsened(val))
    print(f"cnn val {result.val_top1:.3f}, on 2x coarsened val {coarse:.3f}")
    assert coarse >= 0.5, coarse
    pixels = linear_probe(pixel_features(train.images), train.labels, pixel_features(val.images), val.labels, 10)
    assert pixels.top1 <= 0.35, pixels
