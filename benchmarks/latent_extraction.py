"""Throughput of latent extraction against a bare encode loop, and of the latent stream against a DiT step.

    python benchmarks/latent_extraction.py [--per-class N] [--tokenizer FOLDER] [--batch-size B]
                                           [--num-workers W] [--device cpu|cuda] [--repeats 2]
                                           [--dit-preset tiny|B|L|XL] [--dit-steps 5]

On the embedded labelled split at conf/base's size (``data_generation`` of
conf/base/parameters_data_generation.yml: 10 classes x (500 train + 50 val) 32-px images,
generated into a temporary folder; ``--per-class`` sets the training images per class, val
keeping conf/base's train:val ratio) it measures, in images per second:

(a) pipeline: ``extract_latents`` with conf/base's ``latent_extraction.extraction`` settings
    (batch 250, shard 5000, 2 workers; ``--batch-size``, ``--num-workers`` override) and its
    DataLoader worker processes (read, decode, centre
    crop in the workers; encode, copy to the host and write shards in the main process);
(b) bare loop: ``tokenizer.encode`` over the same images, already decoded and cropped into
    one uint8 tensor, at the same batch size. The pipeline encodes every image twice (as is
    and flipped left-right), so this loop does too: the flip, both encodes and the copies to
    the host, nothing else. Target (a) / (b) >= 0.9.
(b1) the bare loop encoding each image once, for scale.

The tokenizer is conf/base's architecture (conf/base/parameters_tokenizer_pretraining.yml)
with random weights, which encode as fast as trained ones, or ``--tokenizer`` (any folder
``load_tokenizer`` opens). Then, on the latents (a) wrote:

(c) ``LatentDataStream`` batches/s with conf/base's ``dit_training.data`` (batch 64, flips
    on, shuffled), against
(d) the batches/s a DiT consumes: conf/base's ``dit_training`` task (``DiTTrainingParams.task_config``, ``stages.dit.build_task``:
    LightningDiT on the tokenizer's latent shape, normalisation, label dropout, flow matching)
    stepped bare on one batch of (c): forward, backward, AdamW, EMA update; no trainer.
    ``--dit-preset`` swaps in a preset's width, depth and heads.

Times are best of ``--repeats``, the three measures interleaved (each pipeline run writes a fresh
folder): on a shared machine a busy spell then hits them alike. Prints a table; asserts nothing.
Images/s of (a) count the splits' encoding time (``summary["splits"][*]["seconds"]``); the channel
statistics and the records written after it are shown apart ("whole call").
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.pipelines.dit_training.nodes import DiTTrainingParams
from vtp_kedro.vtp.data.imagefolder import LabelledImageFolder, center_crop_arr, decode_image_file
from vtp_kedro.vtp.data.latents import (
    CLASSES_FILE,
    LatentDataStream,
    LatentExtractionConfig,
    extract_latents,
)
from vtp_kedro.vtp.engine.optim import OptimizerConfig, build_adamw
from vtp_kedro.vtp.inference import Tokenizer, load_tokenizer
from vtp_kedro.vtp.models.dit import DIT_PRESETS
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig
from vtp_kedro.vtp.stages.dit import DiTTask, build_task
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_labelled_folder

ROOT = Path(__file__).resolve().parents[1]
DATA_PARAMS = ROOT / "conf/base/parameters_data_generation.yml"
TOKENIZER_PARAMS = ROOT / "conf/base/parameters_tokenizer_pretraining.yml"
EXTRACTION_PARAMS = ROOT / "conf/base/parameters_latent_extraction.yml"
DIT_PARAMS = ROOT / "conf/base/parameters_dit_training.yml"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_tokenizer(folder: str | None, device: torch.device) -> Tokenizer:
    if folder is not None:
        return load_tokenizer(folder, device)
    params = yaml.safe_load(TOKENIZER_PARAMS.read_text())["tokenizer_pretraining"]
    torch.manual_seed(0)
    config = TokenizerConfig.model_validate(params["model"]["tokenizer"])
    return Tokenizer(config, params["data"]["image_size"]).to(device)


def decoded_images(image_root: Path, splits: tuple[str, ...], image_size: int) -> torch.Tensor:
    """Every image of ``splits``, decoded and centre-cropped as extraction does: (N, 3, S, S) uint8."""
    pixels = [torch.from_numpy(center_crop_arr(decode_image_file(path), image_size).copy()).permute(2, 0, 1)
              for split in splits for path, _ in LabelledImageFolder(image_root, split).samples]
    return torch.stack(pixels)


@torch.no_grad()
def bare_encode_seconds(tokenizer: Tokenizer, pixels: torch.Tensor, batch_size: int, flipped: bool,
                        device: torch.device) -> float:
    """One pass of the bare loop: what ``_encode_shard`` does per batch, minus the DataLoader and the file."""
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        images = pixels[i:i + batch_size].to(device, non_blocking=True).float().div_(255)
        tokenizer.encode(images).float().cpu()
        if flipped:
            tokenizer.encode(images.flip(-1)).float().cpu()
    synchronize(device)
    return time.perf_counter() - start


def pipeline_seconds(tokenizer: Tokenizer, image_root: Path, output_dir: Path,
                     config: LatentExtractionConfig) -> tuple[float, float, int]:
    """(encoding seconds over the splits, whole call's seconds, images) of one fresh ``extract_latents``."""
    start = time.perf_counter()
    summary = extract_latents(tokenizer, image_root, output_dir, config)
    total = time.perf_counter() - start
    splits = summary["splits"].values()
    return sum(s["seconds"] for s in splits), total, sum(s["images"] for s in splits)


def stream_batches_per_second(stream: LatentDataStream, batches: int) -> float:
    iterator, taken = iter(stream), 0
    start = time.perf_counter()
    while taken < batches:
        try:
            next(iterator)
            taken += 1
        except StopIteration:  # the next epoch, as the trainer does
            iterator = iter(stream)
    return taken / (time.perf_counter() - start)


def dit_task(latent_dir: Path, preset: str | None) -> tuple[DiTTask, LatentDataStream, OptimizerConfig]:
    """conf/base's DiT task and latent stream on ``latent_dir``, as the dit_training pipeline builds them."""
    raw = yaml.safe_load(DIT_PARAMS.read_text())["dit_training"]
    params = DiTTrainingParams.model_validate({**raw, "model": {**raw["model"], **({"preset": preset} if preset else {})}})
    record = json.loads((latent_dir / CLASSES_FILE).read_text())
    torch.manual_seed(0)
    dit, stream = build_task(params.task_config(latent_dir, record))
    return dit, stream, params.trainer.optimizer


def dit_step_seconds(task: DiTTask, optimizer_config: OptimizerConfig, batch: dict, steps: int,
                     device: torch.device) -> float:
    """Median seconds of a bare DiT step on ``batch``: the task's loss, backward, AdamW, EMA."""
    task.model.to(device)
    optimizer = build_adamw(task.named_trainable_parameters(), optimizer_config)
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for step in range(steps + 2):
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss, _ = task.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        task.after_optimizer_step(step, steps + 2)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first steps warm up allocators and caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=None,
                        help="training images per class (default conf/base's; >= 7 for (c)'s batches of 64)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder; default conf/base's, random weights")
    parser.add_argument("--batch-size", type=int, default=None, help="encode batch (default conf/base's)")
    parser.add_argument("--num-workers", type=int, default=None, help="decoding processes (default conf/base's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dit-preset", choices=sorted(DIT_PRESETS), default=None,
                        help="DiT width/depth/heads (default conf/base's dit_training.model)")
    parser.add_argument("--dit-steps", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    generation = yaml.safe_load(DATA_PARAMS.read_text())["data_generation"]
    labelled = generation["labelled"]
    train_per_class = args.per_class or labelled["train_per_class"]
    val_per_class = max(1, train_per_class * labelled["val_per_class"] // labelled["train_per_class"])
    tokenizer = build_tokenizer(args.tokenizer, device)
    image_size = tokenizer.image_size
    generator_config = SyntheticConfig.model_validate({**generation["generator"], "image_size": image_size})
    extraction = yaml.safe_load(EXTRACTION_PARAMS.read_text())["latent_extraction"]["extraction"]
    overrides = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    config = LatentExtractionConfig.model_validate({**extraction, "image_size": image_size,
                                                    **{k: v for k, v in overrides.items() if v is not None}})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        record = write_labelled_folder(tmp / "images", generator_config, train_per_class, val_per_class)
        generated = time.perf_counter() - start
        num_classes = len(record["classes"])
        pixels = decoded_images(tmp / "images", config.splits, image_size)
        bare_encode_seconds(tokenizer, pixels[: 2 * config.batch_size], config.batch_size, True, device)  # warm-up
        bares, onces, runs = [], [], []
        for i in range(args.repeats):  # interleaved, so that a busy spell of the machine hits all three alike
            bares.append(bare_encode_seconds(tokenizer, pixels, config.batch_size, True, device))
            onces.append(bare_encode_seconds(tokenizer, pixels, config.batch_size, False, device))
            runs.append(pipeline_seconds(tokenizer, tmp / "images", tmp / f"latents_{i}", config))
        bare, once, (encoding, total, images) = min(bares), min(onces), min(runs)
        assert images == len(pixels), (images, len(pixels))  # both loops saw the same images
        task, stream, optimizer_config = dit_task(tmp / "latents_0", args.dit_preset)
        stream_rate = stream_batches_per_second(stream, batches=200)
        dit = dit_step_seconds(task, optimizer_config, next(iter(stream)), args.dit_steps, device)
    latent_shape = tokenizer.latent_shape(image_size)
    dit_model = task.model.config.model

    rate = images / encoding
    print(f"latent extraction: {images} images ({num_classes} classes x ({train_per_class} train + {val_per_class} "
          f"val), {image_size} px, generated in {generated:.1f} s), tokenizer "
          f"{'random conf/base' if args.tokenizer is None else args.tokenizer} -> latents {tuple(latent_shape)}, "
          f"batch {config.batch_size}, shards of {config.shard_size}, {config.num_workers} workers, "
          f"device {device.type}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'measure':<52}{'seconds':>10}{'images/s':>12}")
    print(f"{'(a) extract_latents (encoding, as + flipped)':<52}{encoding:>10.2f}{rate:>12.1f}")
    print(f"{'    whole call (+ stats, classes, extraction.json)':<52}{total:>10.2f}{images / total:>12.1f}")
    print(f"{'(b) bare encode loop, as is + flipped':<52}{bare:>10.2f}{images / bare:>12.1f}")
    print(f"{'(b1) bare encode loop, as is only':<52}{once:>10.2f}{images / once:>12.1f}")
    print(f"(a)/(b) = {bare / encoding:.2f}x  (target >= 0.9x; (b) encodes the flipped copy too, as (a) does)")
    record_target("latent_extraction", "pipeline / bare encode loop (images/s)", bare / encoding, 0.9, True)
    print()
    consumed = 1.0 / dit
    print(f"latent stream at batch {stream.config.batch_size} ({stream.steps_per_epoch()} batches/epoch) vs a bare "
          f"DiT step (width {dit_model.width}, depth {dit_model.depth}, heads {dit_model.heads}) on "
          f"{tuple(latent_shape)} latents, device {device.type}")
    print(f"{'measure':<52}{'ms/batch':>10}{'batches/s':>12}")
    print(f"{'(c) LatentDataStream':<52}{1e3 / stream_rate:>10.3f}{stream_rate:>12.1f}")
    print(f"{'(d) DiT training step consumes':<52}{1e3 * dit:>10.1f}{consumed:>12.2f}")
    print(f"stream / consumption = {stream_rate / consumed:.0f}x")
    record_target("dit_training", "latent stream / DiT step consumption", stream_rate / consumed, 3.0, True)


if __name__ == "__main__":
    main()
