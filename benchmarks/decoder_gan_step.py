"""Throughput of one decoder GAN step (generator pass, then discriminator pass) on the CPU default.

    python benchmarks/decoder_gan_step.py [--steps 10] [--batch 64] [--device cpu|cuda]

(a) taming: the generator loss with VQGAN's adaptive weight as written (``adaptive_weight``:
    two ``autograd.grad`` through LPIPS and D, then the full backward), the discriminator pass
    re-encoding the batch;
(b) ours: ``DecoderGANModel`` (``generator_objective``: one pass through LPIPS and D; the
    discriminator pass reusing the frozen encoder's latents);
(c) trainer: (b) through ``Trainer`` (data loading, two optimizers, schedules, logging).
Prints a table of seconds per step and images/s; targets: (b) faster than (a), (c)/(b) <= 1.10.
Asserts nothing. Model and discriminator from conf/base (the tokenizer from tokenizer_pretraining's).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from summary import record_target  # benchmarks/summary.py: the row run_all.py gathers

from vtp_kedro.vtp.engine.optim import OptimizerConfig
from vtp_kedro.vtp.engine.trainer import METRICS_LOG, Trainer, TrainerConfig
from vtp_kedro.vtp.losses.gan import adaptive_weight, generator_adversarial_loss, hinge_d_loss
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig
from vtp_kedro.vtp.stages.decoder_gan import (
    DecoderGANConfig,
    DecoderGANModel,
    DecoderGANTask,
    DecoderGANTaskConfig,
    build_task,
)
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards

CONF = Path(__file__).resolve().parents[1] / "conf/base"


def load(name: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())[name]


def timed(step, steps: int, device: torch.device) -> float:
    times = []
    for index in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def taming_step(model: DecoderGANModel, optimizers: dict, images: torch.Tensor) -> None:
    gan = model.config.gan
    with torch.no_grad():
        z = model.tokenizer.encode(images)
    reconstruction = model.tokenizer.decode(z)
    rec, _ = model.reconstruction_loss(reconstruction, images)
    g_loss = generator_adversarial_loss(model.discriminator(reconstruction), gan.generator_loss)
    weight = gan.disc_weight * adaptive_weight(rec, g_loss, model.tokenizer.decoder.proj_out.weight)
    (rec + weight * g_loss).backward()
    optimizers["generator"].step()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = model.tokenizer.decode(model.tokenizer.encode(images))
    hinge_d_loss(model.discriminator(images), model.discriminator(fake)).backward()
    optimizers["discriminator"].step()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="default: conf/base's batch size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gan_params, tok_params = load("decoder_gan"), load("tokenizer_pretraining")
    tokenizer = TokenizerConfig.model_validate(tok_params["model"]["tokenizer"])
    size, batch = tok_params["data"]["image_size"], args.batch or gan_params["data"]["batch_size"]
    model_config = DecoderGANConfig.model_validate({"tokenizer": tokenizer.model_dump(), **gan_params["model"],
                                                    "gan": {**gan_params["model"]["gan"], "disc_start": 0,
                                                            "gan_start": 0}})
    images = torch.randn(batch, 3, size, size, device=device)
    optimizer = OptimizerConfig(weight_decay=0.0)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)

    rows = []
    torch.manual_seed(0)
    task = DecoderGANTask(DecoderGANModel(model_config).to(device))
    for module in task.frozen_modules():
        module.requires_grad_(False).eval()
    optimizers = task.configure_optimizers({"generator": optimizer, "discriminator": optimizer})
    taming = timed(lambda step: taming_step(task.model, optimizers, images), args.steps, device)
    rows.append(("(a) taming: adaptive weight as written", taming))

    def ours(step: int) -> None:
        batch_ = {"images": images}
        for name, opt in optimizers.items():
            loss, _ = task.training_step(batch_, step, name)
            if loss.requires_grad:
                loss.backward()
            opt.step()
            task.model.zero_grad(set_to_none=True)

    rows.append(("(b) ours: one-pass weight, reused latents", timed(ours, args.steps, device)))

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_captioned_shards(shards, SyntheticConfig(image_size=size), batch * (args.steps + 4), 256)
        raw = {"model": model_config.model_dump(mode="json"),
               "data": {"shards": str(shards), "image_size": size, "batch_size": batch, "captions": False,
                        "num_workers": 2, "shuffle_buffer": 256}}
        torch.manual_seed(0)
        trainer_task, data = build_task(DecoderGANTaskConfig.model_validate(raw))
        trainer_task.model.to(device)
        config = TrainerConfig.model_validate({
            "budget": {"unit": "steps", "value": args.steps + 2}, "device": args.device, "log_every": 1,
            "checkpoint_every": 10**6,
            "optimizers": {"generator": {"weight_decay": 0.0}, "discriminator": {"weight_decay": 0.0}}})
        logging.disable(logging.INFO)
        start = time.perf_counter()
        Trainer(config, trainer_task, data, tmp).fit()
        total = time.perf_counter() - start
        log = (Path(tmp) / METRICS_LOG).read_text().splitlines()
        rate = statistics.median(yaml.safe_load(line)["samples_per_s"] for line in log[2:])
    rows.append(("(c) trainer: (b) with data, optimizers, logging", batch / rate))
    print(f"decoder GAN step, batch {batch} at {size} px on {device} ({torch.get_num_threads()} threads); "
          f"trainer run incl. start-up {total:.1f} s")
    print(f"{'':48s} {'s/step':>8s} {'images/s':>9s} {'vs (b)':>7s}")
    for label, seconds in rows:
        print(f"{label:48s} {seconds:8.3f} {batch / seconds:9.1f} {seconds / rows[1][1]:7.2f}")
    record_target("decoder_gan", "taming step / ours (s/step)", rows[0][1] / rows[1][1], 1.0, True)
    record_target("decoder_gan", "trainer step / bare step", rows[2][1] / rows[1][1], 1.10, False)


if __name__ == "__main__":
    main()
