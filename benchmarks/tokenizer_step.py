"""Throughput of one tokenizer pre-training step: bare model vs the trainer's full step, and the loader.

    python benchmarks/tokenizer_step.py [--steps 20] [--size tiny|S|B|L] [--device cpu|cuda]

(a) bare: ``VTPModel.training_step`` forward + backward + AdamW step on one fixed batch, in the
    trainer's kernel mode (deterministic on CPU by default, for bit-identical resumes);
(b) trainer: the same model through ``Trainer`` (data loading, EMA teacher, logging, schedules);
(c) loader: ``PretrainDataStream`` alone with the configured workers.
Prints a table; targets: (b)/(a) <= 1.10, loader >= 3x what the step consumes. Asserts nothing.
The model is conf/base's (the CPU default); --size swaps in a paper encoder width/depth/heads.
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

from vtp_kedro.vtp.data.loader import PretrainDataConfig, PretrainDataStream
from vtp_kedro.vtp.engine.optim import build_adamw
from vtp_kedro.vtp.engine.trainer import METRICS_LOG, Trainer, TrainerConfig
from vtp_kedro.vtp.models.vit import VIT_PRESETS
from vtp_kedro.vtp.stages.flops import training_step_flops
from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPConfig, VTPModel, VTPTask
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards

BASE = Path(__file__).resolve().parents[1] / "conf/base/parameters_tokenizer_pretraining.yml"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step_seconds(config: VTPConfig, trainer_config: TrainerConfig, batch: dict, steps: int,
                      device: torch.device) -> float:
    torch.manual_seed(0)
    model = VTPModel(config).to(device)
    optimizer = build_adamw(model.named_trainable_parameters(), trainer_config.optimizer_configs(("main",))["main"])
    batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    deterministic = trainer_config.deterministic if trainer_config.deterministic is not None else device.type == "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    times = []
    for step in range(steps + 2):
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss, _ = model.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first steps warm up allocators and caches


def trainer_step_seconds(config: VTPConfig, trainer_config: TrainerConfig, data: PretrainDataConfig,
                         run_dir: Path) -> float:
    torch.manual_seed(0)
    task = VTPTask(VTPModel(config), data.image_size)
    Trainer(trainer_config, task, PretrainDataStream(data), run_dir).fit()
    records = [json.loads(line) for line in (run_dir / METRICS_LOG).read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records[1:]]  # the first window holds the warm-up
    return data.batch_size / statistics.median(rates)


def loader_samples_per_second(data: PretrainDataConfig, batches: int) -> float:
    stream = iter(PretrainDataStream(data))
    next(stream)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", choices=sorted(VIT_PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    params = yaml.safe_load(BASE.read_text())["tokenizer_pretraining"]
    model = params["model"]
    if args.size != "tiny":
        preset = VIT_PRESETS[args.size]
        model["tokenizer"]["encoder"].update(width=preset["width"], depth=preset["depth"], heads=preset["heads"])
    config = VTPConfig.model_validate(model)
    trainer_config = TrainerConfig.model_validate({
        **params["trainer"], "budget": {"unit": "steps", "value": args.steps + 4}, "log_every": 2,
        "checkpoint_every": 10**6, "resume": "never", "device": device.type,
        "optimizer": {**params["trainer"]["optimizer"], "warmup_steps": 1},
    })
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_captioned_shards(tmp / "shards", SyntheticConfig(image_size=params["data"]["image_size"]),
                               count=4096, samples_per_shard=256)
        data = PretrainDataConfig.model_validate({**params["data"], "shards": str(tmp / "shards")})
        first = next(iter(PretrainDataStream(data.model_copy(update={"num_workers": 0}))))
        bare = bare_step_seconds(config, trainer_config, first, args.steps, device)
        full = trainer_step_seconds(config, trainer_config, data, tmp / "run")
        loader = loader_samples_per_second(data, batches=args.steps)

    flops = training_step_flops(config, data.batch_size, data.image_size)["total"]
    consumed = data.batch_size / full
    print(f"tokenizer step, encoder {args.size}, batch {data.batch_size}, {data.image_size} px, "
          f"objective {config.objective}, device {device.type}, {torch.get_num_threads()} threads, "
          f"deterministic kernels {torch.are_deterministic_algorithms_enabled()}")
    print(f"{'measure':<28}{'s/step':>10}{'samples/s':>12}{'GFLOP/s':>10}")
    print(f"{'(a) bare model step':<28}{bare:>10.3f}{data.batch_size / bare:>12.1f}{flops / bare / 1e9:>10.1f}")
    print(f"{'(b) trainer full step':<28}{full:>10.3f}{consumed:>12.1f}{flops / full / 1e9:>10.1f}")
    print(f"{'(c) data loader alone':<28}{'':>10}{loader:>12.1f}{'':>10}")
    print(f"(b)/(a) = {full / bare:.3f}  (target <= 1.10)")
    print(f"loader / consumption = {loader / consumed:.1f}x  (target >= 3x, {data.num_workers} workers)")
    record_target("tokenizer_pretraining", "trainer step / bare step", full / bare, 1.10, False)
    record_target("tokenizer_pretraining", "loader / step consumption", loader / consumed, 3.0, True)


if __name__ == "__main__":
    main()
