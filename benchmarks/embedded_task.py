"""How learnable the embedded labelled task is, and where tokenizers' linear probes land on it.

    python benchmarks/embedded_task.py [--data data/01_raw/labelled_images] [--epochs 12]
                                       [--tokenizer data/06_models/tokenizer ...] [--threads 2]

On the labelled split (``train`` to fit, ``val`` to score) it trains and prints, beside the
chance level:

(a) a small supervised CNN from scratch (``SmallCNN``: 3 conv blocks, AdamW, flips): the
    task is learnable and its labels are visible (target >= 97% within 2 minutes on 2 cores);
    and the same CNN on the val images downsampled 2x and upsampled back: the class survives
    a coarse reconstruction (target >= 90%);
(b) a linear classifier (logistic regression, best of an L2 sweep) on raw pixels: the
    task needs a representation, not a template (target <= 35%);
(c) a weighted k-NN (k = 20) on raw pixels;
(d) for each ``--tokenizer`` checkpoint, the same linear classifier and k-NN on its frozen
    bottleneck latents ``z = tokenizer.encode(x)`` of shape ``(d, h, w)``,
    average-pooled over ``(h, w)`` (``d`` features) and flattened (``d * h * w``), and on the
    bottleneck of its CLS token (``d``, what the CLIP and DINO heads read).

A tokenizer is any folder ``load_tokenizer`` opens: an inference folder
(``data/06_models/pretrained_tokenizer``), the catalog's full checkpoint
``data/06_models/tokenizer`` or a run's ``.../checkpoints/step_XXXXXXXX``. When ``--data``
does not exist, the default split of ``conf/base/parameters_data_generation.yml`` is
generated into a temporary folder first. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.vtp.data.imagefolder import LabelledSplit, load_labelled_split
from vtp_kedro.vtp.data.preprocess import normalize
from vtp_kedro.vtp.inference import Tokenizer, load_tokenizer
from vtp_kedro.vtp.metrics.reference import cnn_accuracy, train_cnn
from vtp_kedro.vtp.metrics.understanding import knn_accuracy, linear_probe, pixel_features
from vtp_kedro.vtp.synthetic.calibration import coarsened
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_labelled_folder

ROOT = Path(__file__).resolve().parents[1]
DATA_PARAMS = ROOT / "conf/base/parameters_data_generation.yml"


def run_config_of(folder: Path) -> dict | None:
    """The resolved run config of a training checkpoint folder (None for an inference folder)."""
    for config_path in (folder / "config.json", folder.parent.parent / "config.json"):
        if config_path.is_file() and "task" in (config := json.loads(config_path.read_text())):
            return config
    return None


@torch.no_grad()
def bottleneck_features(tokenizer: Tokenizer, split: LabelledSplit, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """A split's bottleneck latents as probe features, ``z`` = ``tokenizer.encode`` of shape ``(N, d, h, w)``:

    ``pooled`` = mean of ``z`` over ``(h, w)`` (``d``), ``flat`` = ``z`` flattened (``d * h * w``) and
    ``cls`` = the bottleneck of the CLS token (``d``), which the CLIP and DINO heads read when
    ``semantic_features: bottleneck`` (an autoencoder never trains it).
    """
    latents, cls = [], []
    for i in range(0, len(split.labels), batch_size):
        features = tokenizer.net.forward_features(normalize(split.images[i:i + batch_size].float() / 255.0))
        latents.append(features.latent())
        cls.append(features.latent_tokens[:, 0])
    z = torch.cat(latents)
    return {"pooled": z.mean((2, 3)), "flat": z.flatten(1), "cls": torch.cat(cls)}


def default_split(root: Path) -> Path:
    params = yaml.safe_load(DATA_PARAMS.read_text())["data_generation"]
    write_labelled_folder(root, SyntheticConfig(**params["generator"]), **params["labelled"])
    return root


def describe(run_config: dict | None) -> str:
    if run_config is None:
        return "inference folder"
    model = run_config["task"]["model"]
    budget = run_config["trainer"]["budget"]
    return f"{model['objective']}, budget {budget['value']:g} {budget['unit']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data/01_raw/labelled_images")
    parser.add_argument("--epochs", type=int, default=12, help="CNN epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer", type=Path, nargs="*", default=[], help="tokenizer folders (load_tokenizer)")
    parser.add_argument("--skip-cnn", action="store_true", help="do not train the CNN")
    parser.add_argument("--skip-pixels", action="store_true", help="no raw-pixel linear classifier and k-NN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data if args.data.is_dir() else default_split(Path(tmp) / "labelled_images")
        train, val = load_labelled_split(data, "train"), load_labelled_split(data, "val")
    classes = len(train.classes)
    side = train.images.shape[-1]
    print(f"labelled split {args.data if args.data.is_dir() else '(generated from conf/base)'}: "
          f"{len(train.labels)} train / {len(val.labels)} val, {classes} classes, {side}x{side} px, "
          f"{args.threads} threads")
    rows: list[tuple[str, str, float, float | None, float, str]] = []
    rows.append(("chance", "-", val.chance, None, 0.0, "most frequent class"))

    if not args.skip_pixels:
        xt, xv = pixel_features(train.images), pixel_features(val.images)
        start = time.perf_counter()
        probe = linear_probe(xt, train.labels, xv, val.labels, classes)
        rows.append(("linear", f"raw pixels ({xt.shape[1]})", probe.top1, probe.train_top1,
                     time.perf_counter() - start, f"lr {probe.lr:g}"))
        start = time.perf_counter()
        rows.append(("k-NN k=20", f"raw pixels ({xt.shape[1]})", knn_accuracy(xt, train.labels, xv, val.labels, classes),
                     None, time.perf_counter() - start, "cosine, centred"))
    if not args.skip_cnn:
        cnn = train_cnn(train, val, epochs=args.epochs, seed=args.seed)
        rows.append(("small CNN (supervised)", "pixels", cnn.val_top1, cnn.train_top1, cnn.seconds,
                     f"{cnn.epochs} epochs from scratch"))
        rows.append(("small CNN (supervised)", "2x coarsened val", cnn_accuracy(cnn.model, coarsened(val)), None, 0.0,
                     "the same CNN; val downsampled 2x and upsampled back"))

    for folder in args.tokenizer:
        tokenizer, run_config = load_tokenizer(folder), run_config_of(folder)
        name = f"{folder.parent.parent.name}/{folder.name}" if folder.name.startswith("step_") else folder.name
        start = time.perf_counter()
        ft, fv = bottleneck_features(tokenizer, train), bottleneck_features(tokenizer, val)
        encode_seconds = time.perf_counter() - start
        for kind in ("pooled", "flat", "cls"):
            start = time.perf_counter()
            probe = linear_probe(ft[kind], train.labels, fv[kind], val.labels, classes)
            seconds = time.perf_counter() - start + (encode_seconds if kind == "pooled" else 0.0)
            label = f"bottleneck {kind} ({ft[kind].shape[1]})"
            rows.append((f"linear: {name}", label, probe.top1, probe.train_top1, seconds,
                         f"{describe(run_config)}; lr {probe.lr:g}"))
            rows.append((f"k-NN: {name}", label, knn_accuracy(ft[kind], train.labels, fv[kind], val.labels, classes),
                         None, 0.0, ""))

    for name, _, val_top1, *_ in rows:
        if name == "linear" and not args.skip_pixels:
            record_target("embedded_task", "linear probe on raw pixels (val top-1)", val_top1, 0.35, False)
        if name == "small CNN (supervised)" and _ == "pixels":
            record_target("embedded_task", "supervised CNN (val top-1)", val_top1, 0.97, True)
        if name == "small CNN (supervised)" and _ == "2x coarsened val":
            record_target("embedded_task", "supervised CNN on 2x coarsened val (top-1)", val_top1, 0.90, True)
    width = max(len(r[0]) for r in rows)
    fwidth = max(len(r[1]) for r in rows)
    print(f"\n{'classifier':<{width}}  {'features':<{fwidth}}  {'val top-1':>9}  {'train':>6}  {'seconds':>7}  notes")
    for name, features, val_top1, train_top1, seconds, notes in rows:
        train_text = f"{100 * train_top1:5.1f}%" if train_top1 is not None else "     -"
        print(f"{name:<{width}}  {features:<{fwidth}}  {100 * val_top1:8.1f}%  {train_text:>6}  {seconds:7.1f}  {notes}")


if __name__ == "__main__":
    main()
