"""Every GPU check in one command: paper-scale step throughput and MFU, and the checks that must hold on CUDA.

    python benchmarks/gpu_check.py --out results/gpu [--budget-s 540] [--peak-tflops 989]
                                   [--only tokenizer_vtp_L dit_XL1 ...] [--dry-run]

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (one table), rewritten after every
section, so that a run killed part-way still leaves what it measured. Sections, in the order run
(the most wanted first, so that a budget that runs out cuts the least wanted):

tokenizer_vtp_L   the tokenizer pre-training step of the vtp preset at conf/paper's shapes (ViT-L/16
                  encoder, 256 px, f16d64, the paper's decoder, its text tower and SSL heads), random
                  weights: the largest per-GPU batch that fits (powers of two, bf16, eager), then
                  bf16 autocast eager and torch.compile'd: s/step, images/s, peak memory, MFU.
dit_XL1, dit_B1   LightningDiT-XL/1 and B/1 training steps (conf/paper's DiT recipe) on 16x16x64
                  latents, eager and compiled, beside the throughput LightningDiT reports.
checks            on the device: bf16 losses finite; compile and eager agree on the first step; a
                  run killed with SIGKILL resumes exactly in fp32 and within tolerance in bf16;
                  FSDP2 (a one-rank process group) wraps the model and saves a checkpoint that
                  loads on the CPU. Small models, through the project's trainer and launcher.
latents_sampling  tokenizer encode throughput as latent extraction runs it (each image as is and
                  flipped), fp32 (what the job does) and bf16; sampling: LightningDiT-XL/1 with
                  50 Euler steps and CFG, then the tokenizer's decoder: images/s.
tokenizer_ae_L, tokenizer_vtp_B   section 1 for the ae preset, and for a ViT-B/16 encoder.
chain             ``kedro run --env gpu`` (conf/gpu) in a scratch copy of the project: its wall
                  time and evaluation metrics.

A step here is the model's own (``task.training_step``, backward, gradient clipping, AdamW,
``task.after_optimizer_step``), as benchmarks/tokenizer_step.py's "bare" step; the trainer's
overhead over it is that benchmark's target. MFU = analytic model FLOPs per step
(``stages/flops.py``, ``dit_forward_flops``) / seconds per step / the GPU's dense bf16 peak (a
table keyed by ``torch.cuda.get_device_name()``, or ``--peak-tflops``).

Each section is isolated: an error (out of memory, a compile failure) is recorded in the JSON and
the next section runs. ``--budget-s`` bounds the wall time: a section that would start after it
is skipped with the reason recorded. Nothing is downloaded: every model is built from the
project's configs with random weights (LPIPS' VGG too), and the data is synthetic.

``--dry-run`` runs the same logic on the CPU at tiny shapes (no CUDA; torch.compile with the
``eager`` backend, the tokenizer step compiled once, by the checks, not again in its sections;
the chain skipped, conf/gpu's parameters validated instead): a check of the script and its
output format, not of numbers (tests/pipelines/test_benchmarks_gpu_check.py). Asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Deterministic cuBLAS for the exact fp32 resume check: must be set before CUDA starts (children inherit it).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from vtp_kedro.vtp.engine import checkpoint as ckpt  # noqa: E402
from vtp_kedro.vtp.engine.optim import OptimizerConfig  # noqa: E402
from vtp_kedro.vtp.engine.trainer import METRICS_LOG, Trainer, TrainerConfig  # noqa: E402
from vtp_kedro.vtp.inference import Tokenizer  # noqa: E402
from vtp_kedro.vtp.launch.launcher import LauncherConfig, launch  # noqa: E402
from vtp_kedro.vtp.models.dit import DiTArchitecture, dit_forward_flops  # noqa: E402
from vtp_kedro.vtp.models.vit import VIT_PRESETS  # noqa: E402
from vtp_kedro.vtp.sampling import SamplerConfig  # noqa: E402
from vtp_kedro.vtp.stages import Stage  # noqa: E402
from vtp_kedro.vtp.stages.dit import DiTTask, DiTTrainingConfig, FlowDiT  # noqa: E402
from vtp_kedro.vtp.stages.registry import register_stage  # noqa: E402
from vtp_kedro.vtp.stages.tokenizer_pretraining import (  # noqa: E402
    TokenizerPretrainingConfig,
    VTPConfig,
    VTPModel,
    VTPTask,
    build_task,
)
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards  # noqa: E402

# Only the model library above: the resume check's training process imports this module for its
# stage (gpu_check_slow), and Kedro (imported where the configs are read) would add seconds to its start.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JSON_FILE, MARKDOWN_FILE = "gpu_check.json", "gpu_check.md"
SECTIONS = ("tokenizer_vtp_L", "dit_XL1", "dit_B1", "checks", "latents_sampling",
            "tokenizer_ae_L", "tokenizer_vtp_B", "chain")
CHECKS = ("bf16_losses_finite", "compile_matches_eager", "resume_fp32_exact", "resume_bf16_close",
          "fsdp2_checkpoint_loads_on_cpu")
STATUSES = ("ok", "failed", "error", "skipped")
# Dense bf16 peak (TFLOP/s) by a substring of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
)
# What LightningDiT's README reports, as per-GPU images/s (hustvl/LightningDiT, README and docs/tutorial.md):
# XL/1 trained "64 epochs ... about 10 hours with 8 x H800 GPUs" on f16d32 latents (ImageNet-1k train:
# 1,281,167 images). The README gives no B/1 timing.
IMAGENET_TRAIN = 1_281_167
LIGHTNINGDIT_REFERENCE = {
    "XL": {"images_per_s_per_gpu": 64 * IMAGENET_TRAIN / (10 * 3600) / 8, "gpu": "H800",
           "source": "hustvl/LightningDiT README: XL/1, 64 epochs of ImageNet in about 10 h on 8 H800 "
                     "(f16d32 latents), whole-run average"},
    "B": {"images_per_s_per_gpu": None, "gpu": None, "source": "hustvl/LightningDiT reports no B/1 throughput"},
}
# --dry-run: tiny shapes of the same configs (conf/paper's, shrunk), CPU only.
DRY_TOKENIZER = {
    "tokenizer": {"encoder": {"width": 64, "depth": 1, "heads": 1, "patch_size": 4, "image_size": 32},
                  "latent_dim": 16, "decoder_width": 64, "decoder_depth": 1, "decoder_heads": 1},
    "text": {"width": 64, "heads": 1, "layers": 1, "context_length": 32},
    "embed_dim": 64,
    "dino_head": {"prototypes": 128, "hidden_dim": 128, "bottleneck_dim": 32, "freeze_last_layer_steps": 0},
    "ssl": {"out_dim": 128, "teacher_temperature_warmup_steps": 2},
    "multicrop": {"global_size": 32, "local_size": 16, "local_crops": 2},
}


# --- configs ---------------------------------------------------------------------------------
def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys, nested dictionaries merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def env_parameters(env: str) -> dict:
    """The parameters ``kedro run --env <env>`` sees (conf/base overridden by conf/<env>)."""
    from kedro.config import OmegaConfigLoader

    from vtp_kedro.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    return copy.deepcopy(loader["parameters"])


def tokenizer_model(paper: dict, objective: str, size: str, dry: bool, **override: Any) -> dict:
    """conf/paper's tokenizer_pretraining.model with ``objective``, an encoder of ``size``, a random-weight LPIPS."""
    model = merged(paper["tokenizer_pretraining"]["model"], {
        "objective": objective, "reconstruction": {"perceptual_backbone": "random", "weights_dir": None}})
    if size != "L":
        model["tokenizer"]["encoder"].update({k: VIT_PRESETS[size][k] for k in ("width", "depth", "heads")})
    if dry:
        model = merged(model, DRY_TOKENIZER)
    return merged(model, override)


def small_tokenizer_model(paper: dict) -> dict:
    """The checks' model: conf/paper's vtp preset at the dry run's shapes, without stochastic depth
    (eager and compiled draws of it differ), so the checks take seconds."""
    return tokenizer_model(paper, "vtp", "L", dry=True, drop_path=None)


def dit_training_config(paper: dict, preset: str, channels: int, side: int, batch: int) -> DiTTrainingConfig:
    """conf/paper's dit_training task with the DiT size ``preset`` on (channels, side, side) latents."""
    params = paper["dit_training"]
    architecture = DiTArchitecture.model_validate({**params["model"], "preset": preset})
    return DiTTrainingConfig.model_validate({
        "model": architecture.for_latents(channels, side, 1000).model_dump(), "flow": params["flow"],
        "data": {"latents": "(random latents)", "batch_size": batch},
        **{k: params[k] for k in ("class_dropout", "latent_multiplier", "ema_decay")}})


# --- the run's state, its output ---------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.start = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.backend = "eager" if self.dry else "inductor"
        self.device_name = "cpu (dry run)" if self.dry else torch.cuda.get_device_name(self.device)
        self.peak_tflops, self.peak_source = self._peak(args.peak_tflops)
        self.paper = env_parameters("paper")
        self.bf16_losses: list[float] = []  # every bf16 loss of the run: the finiteness check reads them
        self.results: dict[str, Any] = {
            "meta": {"device": self.device_name, "dry_run": self.dry, "peak_bf16_tflops": self.peak_tflops,
                     "peak_source": self.peak_source, "torch": torch.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version(),
                     "budget_s": args.budget_s, "started": datetime.datetime.now(datetime.UTC).isoformat(),
                     "elapsed_s": 0.0, "finished": False},
            "sections": {name: {"status": "skipped", "reason": "not reached"} for name in SECTIONS},
        }

    def _peak(self, given: float | None) -> tuple[float | None, str]:
        if given is not None:
            return given, "--peak-tflops"
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in self.device_name:
                return tflops, f"table ({key})"
        return None, "unknown device: give --peak-tflops for MFU"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed

    def mfu(self, flops_per_s: float) -> float | None:
        return None if self.peak_tflops is None else flops_per_s / (self.peak_tflops * 1e12)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed, 1)
        for name, text in ((JSON_FILE, json.dumps(self.results, indent=2, default=str) + "\n"),
                           (MARKDOWN_FILE, markdown(self.results))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- one training step, timed ----------------------------------------------------------------
def run_steps(run: Run, task: Any, optimizers: dict, clips: dict, step_fn: Callable, batch: dict, steps: int,
              bf16: bool = True, first_step: int = 0) -> tuple[list[float], list[float]]:
    """``steps`` model steps (forward, backward, clip to ``clips[name]``, AdamW, after_optimizer_step):
    (seconds, losses)."""
    times, losses = [], []
    for step in range(first_step, first_step + steps):
        run.synchronize()
        start = time.perf_counter()
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step_fn(batch, step)
        loss.backward()
        for name, optimizer in optimizers.items():
            if clips.get(name) is not None:
                params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, clips[name])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(step, 10**6)
        run.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach().float()))
        if bf16:
            run.bf16_losses.append(losses[-1])
    return times, losses


def largest_batch(run: Run, task: Any, optimizers: dict, clips: dict, make_batch: Callable[[int], dict],
                  candidates: list[int]) -> tuple[int | None, dict[str, str]]:
    """The largest of ``candidates`` (ascending powers of two) whose two bf16 eager steps fit in memory."""
    best, tried = None, {}
    for size in candidates:
        oom = False
        try:
            run_steps(run, task, optimizers, clips, task.training_step, make_batch(size), steps=2)
            tried[str(size)] = "fits"
            best = size
        except Exception as error:  # noqa: BLE001 - OOM ends the search, anything else is the section's error
            if not is_oom(error):
                raise
            oom = True
            tried[str(size)] = "out of memory"
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        run.reset_memory()
        if oom:
            break
    return best, tried


def measure(run: Run, task: Any, optimizers: dict, clips: dict, make_batch: Callable[[int], dict], candidates: list[int],
            flops_of: Callable[[dict], float], skip_dry_compile: bool = False) -> dict[str, Any]:
    """Batch search, then eager and compiled bf16 timings at that batch: the section's rows."""
    args = run.args
    batch_size, tried = largest_batch(run, task, optimizers, clips, make_batch, candidates)
    section: dict[str, Any] = {"batch_search": tried, "rows": []}
    if batch_size is None:
        raise RuntimeError(f"not even batch {candidates[0]} fits: {tried}")
    batch = make_batch(batch_size)
    flops = flops_of(batch)
    warmup = args.warmup_steps
    for case in ("eager", "compile"):
        row: dict[str, Any] = {"case": f"bf16 {case}", "batch": batch_size}
        if case == "compile" and run.dry and skip_dry_compile:
            row.update(status="skipped", note="dry run: the checks' compile_matches_eager compiles this step")
            section["rows"].append(row)
            continue
        if case == "compile" and run.remaining < args.compile_reserve_s:
            row.update(status="skipped", note=f"{run.remaining:.0f} s of budget left, compile needs ~{args.compile_reserve_s} s")
            section["rows"].append(row)
            continue
        try:
            run.reset_memory()
            step_fn = (torch.compile(task.training_step, backend=run.backend) if case == "compile"
                       else task.training_step)
            times, losses = run_steps(run, task, optimizers, clips, step_fn, batch, warmup + args.steps, first_step=100)
            seconds = statistics.median(times[warmup:])
            row.update(status="ok", s_per_step=seconds, images_per_s=batch_size / seconds, peak_gib=run.peak_gib(),
                       tflops=flops / seconds / 1e12, mfu=run.mfu(flops / seconds), warmup_s=sum(times[:warmup]),
                       first_loss=losses[0], losses_finite=all(math.isfinite(x) for x in losses))
            if not row["losses_finite"]:
                row["status"] = "failed"
        except Exception as error:  # noqa: BLE001 - recorded, the other case still runs
            row.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
        finally:
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            if case == "compile":
                torch._dynamo.reset()
        section["rows"].append(row)
    statuses = {row["status"] for row in section["rows"]}
    section["status"] = "error" if "error" in statuses else "failed" if "failed" in statuses else "ok"
    section["flops_per_step"] = flops
    return section


# --- sections --------------------------------------------------------------------------------
def tokenizer_section(run: Run, objective: str, size: str) -> dict[str, Any]:
    model_params = tokenizer_model(run.paper, objective, size, run.dry)
    config = VTPConfig.model_validate(model_params)
    data = run.paper["tokenizer_pretraining"]["data"]
    image_size = config.tokenizer.encoder.image_size if run.dry else data["image_size"]
    context = config.text.context_length
    trainer = TrainerConfig.model_validate(run.paper["tokenizer_pretraining"]["trainer"])
    torch.manual_seed(0)
    task = VTPTask(VTPModel(config).to(run.device), image_size)
    if trainer.activation_checkpointing:  # as conf/paper trains it (its batch of 256 per GPU needs it)
        task.set_activation_checkpointing(True)
    optimizer_configs = trainer.optimizer_configs(task.optimizer_names)
    optimizers = task.configure_optimizers(optimizer_configs)
    clips = {name: config.grad_clip for name, config in optimizer_configs.items()}

    def make_batch(size: int) -> dict:
        generator = torch.Generator().manual_seed(size)
        return {"images": torch.randn(size, 3, image_size, image_size, generator=generator).to(run.device),
                "tokens": torch.randint(0, config.text.vocab_size, (size, context), generator=generator).to(run.device)}

    candidates = [2] if run.dry else [16, 32, 64, 128, 256, 512][: 1 + int(math.log2(run.args.max_batch / 16))]
    try:
        section = measure(run, task, optimizers, clips, make_batch, candidates, task.flops_per_step,
                          skip_dry_compile=True)
    finally:
        del task, optimizers
        run.reset_memory()
    encoder = config.tokenizer.encoder
    section["shape"] = (f"{objective} preset, encoder {encoder.width}/{encoder.depth}/{encoder.heads} patch "
                        f"{encoder.patch_size}, {image_size} px, d{config.tokenizer.latent_dim}, decoder "
                        f"{config.tokenizer.decoder_width}/{config.tokenizer.decoder_depth}, conf/paper batch "
                        f"{data['batch_size']}, activation checkpointing {trainer.activation_checkpointing}")
    if objective == "ae":
        section["note"] = (f"images/s counts whole batches; the ae preset reconstructs rec_fraction "
                           f"({config.rec_fraction:g}) of each")
    return section


def dit_section(run: Run, preset: str) -> dict[str, Any]:
    channels, side = (16, 4) if run.dry else (64, 16)
    config = dit_training_config(run.paper, "tiny" if run.dry else preset, channels, side, batch=1)
    optimizer_config = OptimizerConfig.model_validate(run.paper["dit_training"]["trainer"]["optimizer"])
    torch.manual_seed(0)
    task = DiTTask(FlowDiT(config, torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)).to(run.device))
    optimizers = task.configure_optimizers({name: optimizer_config for name in task.optimizer_names})
    clips = {name: optimizer_config.grad_clip for name in task.optimizer_names}

    def make_batch(size: int) -> dict:
        generator = torch.Generator().manual_seed(size)
        return {"latents": torch.randn(size, channels, side, side, generator=generator).to(run.device),
                "labels": torch.randint(0, 1000, (size,), generator=generator).to(run.device)}

    candidates = [2] if run.dry else [32, 64, 128, 256, 512, 1024][: 1 + int(math.log2(run.args.max_batch * 2 / 32))]
    try:
        section = measure(run, task, optimizers, clips, make_batch, candidates, task.flops_per_step)
    finally:
        del task, optimizers
        run.reset_memory()
    model = config.model
    reference = LIGHTNINGDIT_REFERENCE[preset]
    label = "tiny" if run.dry else preset
    section["shape"] = (f"LightningDiT-{label}/1 ({model.width}/{model.depth}/{model.heads}, patch {model.patch_size}) "
                        f"on {channels}x{side}x{side} latents")
    section["reference"] = reference
    if reference["images_per_s_per_gpu"] is not None:
        ref_config = config.model.model_copy(update={"in_channels": 32})  # its f16d32 latents
        ref_flops = 3 * dit_forward_flops(ref_config) * reference["images_per_s_per_gpu"]
        section["reference"] = {**reference, "tflops": ref_flops / 1e12,
                                "mfu_at_this_gpu_peak": run.mfu(ref_flops),
                                "mfu_at_h800_peak": ref_flops / 989e12}
        for row in section["rows"]:
            if "images_per_s" in row:
                row["vs_reference"] = row["images_per_s"] / reference["images_per_s_per_gpu"]
    return section


def latents_sampling_section(run: Run) -> dict[str, Any]:
    tokenizer_params = tokenizer_model(run.paper, "vtp", "L", run.dry)
    config = VTPConfig.model_validate(tokenizer_params)
    image_size = config.tokenizer.encoder.image_size if run.dry else run.paper["tokenizer_pretraining"]["data"]["image_size"]
    torch.manual_seed(0)
    tokenizer = Tokenizer(config.tokenizer, image_size).to(run.device)
    channels, side, _ = tokenizer.latent_shape()
    rows = []
    encode_batch = 4 if run.dry else run.args.encode_batch
    images = torch.rand(encode_batch, 3, image_size, image_size, device=run.device)
    for precision in ("fp32", "bf16"):
        row: dict[str, Any] = {"case": f"encode as is + flipped, {precision}", "batch": encode_batch}
        try:
            run.reset_memory()
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                seconds = []
                for _ in range(1 + run.args.repeats):  # the first warms up
                    run.synchronize()
                    start = time.perf_counter()
                    tokenizer.encode(images).float().cpu()
                    tokenizer.encode(images.flip(-1)).float().cpu()
                    run.synchronize()
                    seconds.append(time.perf_counter() - start)
            best = min(seconds[1:])
            row.update(status="ok", s_per_batch=best, images_per_s=encode_batch / best, peak_gib=run.peak_gib())
        except Exception as error:  # noqa: BLE001
            row.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
        rows.append(row)
    del images

    sampling = run.paper["dit_training"]["sampling"]
    cfg_scale = sampling["cfg_scale"] if sampling["cfg_scale"] > 1 else 1.5  # conf/paper has none; the check wants CFG
    sampler = SamplerConfig.model_validate({**{k: sampling[k] for k in SamplerConfig.model_fields if k in sampling},
                                            "num_steps": 51, "cfg_scale": cfg_scale})  # 51 grid points: 50 Euler steps
    preset = "tiny" if run.dry else "XL"
    dit_config = dit_training_config(run.paper, preset, channels, side, batch=1)
    torch.manual_seed(0)
    flow = FlowDiT(dit_config, torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)).to(run.device).eval()
    for precision, batch in (("fp32", 2 if run.dry else run.args.sample_batch_fp32),
                             ("bf16", 2 if run.dry else run.args.sample_batch_bf16)):
        row = {"case": f"sample {preset}/1, 50 Euler steps, CFG {cfg_scale:g}, + decode, {precision}", "batch": batch}
        try:
            run.reset_memory()
            noise = torch.randn(batch, channels, side, side, device=run.device)
            labels = torch.arange(batch, device=run.device) % 1000
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                flow.sample_latents(noise, labels, sampler.model_copy(update={"num_steps": 2}))  # warm-up
                run.synchronize()
                start = time.perf_counter()
                pixels = tokenizer.decode(flow.sample_latents(noise, labels, sampler))
                run.synchronize()
                seconds = time.perf_counter() - start
            # DiT FLOPs only: 50 steps of a forward on the CFG-doubled batch (guidance at every step of
            # conf/paper's interval, 0 to 1); the decoder's are not counted.
            flops = 50 * 2 * dit_forward_flops(dit_config.model) * batch
            row.update(status="ok" if torch.isfinite(pixels).all() else "failed", s_per_batch=seconds,
                       images_per_s=batch / seconds, peak_gib=run.peak_gib(), tflops=flops / seconds / 1e12,
                       mfu=run.mfu(flops / seconds) if precision == "bf16" else None)
        except Exception as error:  # noqa: BLE001
            row.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
        rows.append(row)
    del tokenizer, flow
    run.reset_memory()
    statuses = {row["status"] for row in rows}
    return {"status": "error" if "error" in statuses else "failed" if "failed" in statuses else "ok", "rows": rows,
            "shape": f"tokenizer ViT-L/16 f16d{channels} at {image_size} px; DiT on {channels}x{side}x{side}"}


# --- the checks -------------------------------------------------------------------------------
class SlowStream:
    """A data stream that waits ``delay_s`` per batch, so that a kill lands between two checkpoints, and,
    given a ``gate`` file, waits for it before the first batch: the process starts (and imports) early,
    and trains when told to."""

    def __init__(self, stream: Any, delay_s: float, gate: str | None = None) -> None:
        self.stream, self.delay_s, self.gate = stream, delay_s, gate

    def __iter__(self):
        while self.gate is not None and not Path(self.gate).exists():
            time.sleep(0.01)
        for batch in self.stream:
            time.sleep(self.delay_s)
            yield batch

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class SlowTaskConfig(TokenizerPretrainingConfig):
    delay_s: float = Field(ge=0)
    gate: str | None = None


def build_slow_task(config: SlowTaskConfig) -> tuple[VTPTask, SlowStream]:
    """The resume check's stage (``gpu_check_slow``): the tokenizer task, slowed data."""
    task, data = build_task(TokenizerPretrainingConfig(**config.model_dump(exclude={"delay_s", "gate"})))
    return task, SlowStream(data, config.delay_s, config.gate)


# Registered by the importable module ``gpu_check`` (the run configs' ``imports``), in the killed
# run's process and in this script's own, where this file runs as ``__main__``: registering from
# ``__main__`` too would put a second, different stage under the same name.
if __name__ != "__main__":
    register_stage(Stage("gpu_check_slow", SlowTaskConfig, build_slow_task))


def check_result(ok: bool, **detail: Any) -> dict[str, Any]:
    return {"status": "ok" if ok else "failed", **detail}


def weight_differences(a: Path, b: Path) -> tuple[bool, float]:
    """(bit-identical, largest |difference| relative to the tensor's largest |value|) of two checkpoints' weights."""
    left, right = ckpt.load_checkpoint(a)["model"], ckpt.load_checkpoint(b)["model"]
    if left.keys() != right.keys():
        return False, math.inf
    exact, worst = True, 0.0
    for name in left:
        x, y = left[name], right[name]
        if not torch.equal(x, y):
            exact = False
            if x.is_floating_point():
                worst = max(worst, float((x.float() - y.float()).abs().max() / x.float().abs().max().clamp_min(1e-12)))
            else:
                worst = math.inf
    return exact, worst


def check_compile_matches_eager(run: Run, model_params: dict, image_size: int) -> dict[str, Any]:
    """One bf16 step of the same model and batch, eager and compiled: the loss and the gradient norm."""
    config = VTPConfig.model_validate(model_params)
    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.randn(4, 3, image_size, image_size, generator=generator).to(run.device),
             "tokens": torch.randint(0, config.text.vocab_size, (4, config.text.context_length),
                                     generator=generator).to(run.device)}
    measured = {}
    for case in ("eager", "compile"):
        torch.manual_seed(0)
        model = VTPModel(config).to(run.device)
        task = VTPTask(model, image_size)
        step_fn = torch.compile(task.training_step, backend=run.backend) if case == "compile" else task.training_step
        with torch.autocast(run.device.type, dtype=torch.bfloat16):
            loss, _ = step_fn(batch, 0)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for _, p in task.named_trainable_parameters() if p.grad is not None])
        measured[case] = (float(loss.float()), float(norm))
        run.bf16_losses.append(measured[case][0])
        del model, task, step_fn
    torch._dynamo.reset()
    (loss_e, norm_e), (loss_c, norm_c) = measured["eager"], measured["compile"]
    loss_rel, norm_rel = abs(loss_c - loss_e) / abs(loss_e), abs(norm_c - norm_e) / norm_e
    return check_result(loss_rel <= 2e-2 and norm_rel <= 5e-2, loss_eager=loss_e, loss_compile=loss_c,
                        loss_rel_diff=loss_rel, grad_norm_eager=norm_e, grad_norm_compile=norm_c,
                        grad_norm_rel_diff=norm_rel, tolerance="loss 2e-2, gradient norm 5e-2 (relative)")


RESUME_STEPS, RESUME_CHECKPOINT_EVERY = 8, 4


def start_killed_run(run: Run, scratch: Path, task: dict, precision: str) -> dict[str, Any]:
    """Write the resume check's configs and start the run to be killed, waiting at its gate (it imports meanwhile)."""
    trainer = {"budget": {"unit": "steps", "value": RESUME_STEPS}, "optimizer": {"lr": 1e-3, "warmup_steps": 1},
               "log_every": 2, "checkpoint_every": RESUME_CHECKPOINT_EVERY, "device": run.device.type,
               "precision": precision, "compile": False, "deterministic": precision == "fp32"}
    folder = scratch / f"resume_{precision}"
    gate = folder / "go"
    configs = {}
    for name in ("reference", "killed"):
        configs[name] = folder / name / "config.json"
        configs[name].parent.mkdir(parents=True, exist_ok=True)
        settings = {**task, "delay_s": 0.05, **({"gate": str(gate)} if name == "killed" else {})}
        configs[name].write_text(json.dumps({"job": "train", "trainer": trainer, "stage": "gpu_check_slow",
                                             "imports": ["gpu_check"], "task": settings}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "vtp_kedro.vtp.launch", "--config", str(configs["killed"])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    return {"precision": precision, "configs": configs, "gate": gate, "process": process}


def stop_killed_run(state: dict[str, Any]) -> None:
    process = state["process"]
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def check_resume(run: Run, state: dict[str, Any]) -> dict[str, Any]:
    """A run killed (SIGKILL) after its first checkpoint and resumed, against the same run uninterrupted."""
    precision, configs, process = state["precision"], state["configs"], state["process"]
    reference = launch(configs["reference"], configs["reference"].parent, LauncherConfig())
    state["gate"].touch()
    first = configs["killed"].parent / "checkpoints" / ckpt.checkpoint_name(RESUME_CHECKPOINT_EVERY)
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    stop_killed_run(state)
    killed_at = ckpt.latest_checkpoint(configs["killed"].parent / "checkpoints")
    if killed_at is None or ckpt.checkpoint_step(killed_at) >= RESUME_STEPS:
        return {"status": "error", "error": f"the kill missed: last checkpoint {killed_at}, exit code {process.returncode}"}
    resumed = launch(configs["killed"], configs["killed"].parent, LauncherConfig())
    result = json.loads((configs["killed"].parent / "result.json").read_text())
    exact, worst = weight_differences(reference, resumed)
    losses = [json.loads(line)["loss"] for line in (configs["killed"].parent / METRICS_LOG).read_text().splitlines()]
    if precision == "bf16":
        run.bf16_losses.extend(losses)
    detail = {"killed_at_step": ckpt.checkpoint_step(killed_at), "resumed_from": result["resumed_from"],
              "bit_identical": exact, "max_rel_weight_diff": worst}
    if precision == "fp32":
        return check_result(exact and result["resumed_from"] is not None, **detail)
    return check_result(worst <= 1e-2 and result["resumed_from"] is not None, tolerance="1e-2 relative", **detail)


def check_fsdp(run: Run, scratch: Path, task: dict) -> dict[str, Any]:
    """FSDP2 over a one-rank process group: the trainer shards, saves a full checkpoint; it loads on the CPU."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    folder = scratch / "fsdp"
    folder.mkdir(parents=True, exist_ok=True)
    backend = "nccl" if run.device.type == "cuda" else "gloo"
    if run.device.type == "cuda":
        torch.cuda.set_device(run.device)
    dist.init_process_group(backend, init_method=f"file://{folder / 'store'}", rank=0, world_size=1)
    try:
        trainer_config = TrainerConfig.model_validate({
            "budget": {"unit": "steps", "value": 2}, "optimizer": {"lr": 1e-3, "warmup_steps": 0},
            "log_every": 1, "checkpoint_every": 2, "device": run.device.type, "parallel": "fsdp", "compile": False})
        torch.manual_seed(0)
        model_task, data = build_task(TokenizerPretrainingConfig.model_validate(task))
        trainer = Trainer(trainer_config, model_task, data, folder / "run")
        final = trainer.fit()
        sharded = isinstance(trainer.module, FSDPModule)
        dtensors = all(type(p).__name__ == "DTensor" for _, p in model_task.named_trainable_parameters())
    finally:
        dist.destroy_process_group()
    state = ckpt.load_checkpoint(final, map_location="cpu")
    cpu_model = VTPModel(VTPConfig.model_validate(task["model"]))
    ckpt.load_state_strictly(cpu_model, state["model"], str(final))
    image_size = task["data"]["image_size"]
    with torch.no_grad():
        latents = cpu_model.tokenizer.encode(torch.randn(2, 3, image_size, image_size))
    return check_result(sharded and dtensors and bool(torch.isfinite(latents).all()), fsdp_module=sharded,
                        parameters_are_dtensors=dtensors, checkpoint=final.name, loaded_on_cpu=True)


def checks_section(run: Run) -> dict[str, Any]:
    model = small_tokenizer_model(run.paper)
    image_size = model["tokenizer"]["encoder"]["image_size"]
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        write_captioned_shards(scratch / "shards", SyntheticConfig(image_size=image_size), count=128, samples_per_shard=32)
        task = {"model": model, "data": {"shards": str(scratch / "shards"), "image_size": image_size, "batch_size": 8,
                                         "num_workers": 0, "context_length": model["text"]["context_length"]}}
        # The runs to be killed start first: they import while the other checks run, then wait at their gate.
        killed = {precision: start_killed_run(run, scratch, task, precision) for precision in ("fp32", "bf16")}
        runners = {
            "compile_matches_eager": lambda: check_compile_matches_eager(run, model, image_size),
            "resume_fp32_exact": lambda: check_resume(run, killed["fp32"]),
            "resume_bf16_close": lambda: check_resume(run, killed["bf16"]),
            "fsdp2_checkpoint_loads_on_cpu": lambda: check_fsdp(run, scratch, task),
        }
        try:
            for name, runner in runners.items():
                started = time.monotonic()
                try:
                    checks[name] = runner()
                except Exception as error:  # noqa: BLE001 - recorded, the next check runs
                    checks[name] = {"status": "error", "error": f"{type(error).__name__}: {error}"[:2000],
                                    "traceback": traceback.format_exc()[-3000:]}
                checks[name]["seconds"] = round(time.monotonic() - started, 1)
                run.reset_memory()
        finally:
            for state in killed.values():
                stop_killed_run(state)
    finite = [x for x in run.bf16_losses if math.isfinite(x)]
    checks = {"bf16_losses_finite": check_result(bool(run.bf16_losses) and len(finite) == len(run.bf16_losses),
                                                 losses=len(run.bf16_losses), finite=len(finite),
                                                 note="every bf16 loss of this run so far (sections and checks)"),
              **checks}
    statuses = {check["status"] for check in checks.values()}
    status = "error" if "error" in statuses else "failed" if "failed" in statuses else "ok"
    return {"status": status, "checks": checks}


def chain_section(run: Run) -> dict[str, Any]:
    """``kedro run --env gpu`` in a scratch copy of the project; its wall time and evaluation metrics."""
    if run.dry:
        from vtp_kedro.pipelines.dit_training.nodes import DiTTrainingParams
        from vtp_kedro.pipelines.tokenizer_pretraining.nodes import TokenizerPretrainingParams

        gpu = env_parameters("gpu")
        TokenizerPretrainingParams.model_validate(gpu["tokenizer_pretraining"])
        DiTTrainingParams.model_validate(gpu["dit_training"])
        return {"status": "skipped", "reason": "dry run: the chain takes minutes on a CPU; conf/gpu's "
                "tokenizer_pretraining and dit_training parameters validated instead"}
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "project"
        project.mkdir()
        for name in ("pyproject.toml", "src", "conf", "dvc.yaml"):
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "local"))
            elif source.exists():
                shutil.copy2(source, project / name)
        (project / "conf" / "local").mkdir(exist_ok=True)
        for layer in ("01_raw", "03_primary", "08_reporting"):
            (project / "data" / layer).mkdir(parents=True, exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KEDRO_ENV"))},
               "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
               "PYTHONPATH": os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")])}
        kedro = Path(sys.executable).parent / "kedro"
        timeout = max(30.0, run.remaining)
        start = time.monotonic()
        try:
            result = subprocess.run([str(kedro), "run", "--env", "gpu"], cwd=project, env=env, capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"kedro run --env gpu still running after {timeout:.0f} s (budget)"}
        seconds = time.monotonic() - start
        (run.out / "chain.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            return {"status": "error", "seconds": seconds, "error": f"exit code {result.returncode}",
                    "log_tail": (result.stdout + result.stderr)[-3000:]}
        metrics_file = project / "data/08_reporting/evaluation/metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        return {"status": "ok" if metrics is not None else "failed", "seconds": seconds, "metrics": metrics,
                "rows": [{"case": "kedro run --env gpu (whole chain)", "status": "ok", "s_per_batch": seconds}]}


# --- the table ---------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    peak = f"{meta['peak_bf16_tflops']:g} TFLOP/s bf16 ({meta['peak_source']})" if meta["peak_bf16_tflops"] else meta["peak_source"]
    lines = [f"# GPU check{' (dry run)' if meta['dry_run'] else ''}", "",
             f"{meta['device']}, peak {peak}; torch {meta['torch']}, CUDA {meta['cuda']}; started {meta['started']}, "
             f"{meta['elapsed_s']:.0f} s of a {meta['budget_s']:g} s budget{'' if meta['finished'] else ' (unfinished)'}.",
             "", "| section | case | batch | s/step | images/s | peak GiB | TFLOP/s | MFU | warm-up s | "
             "reference images/s/GPU | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, section in results["sections"].items():
        reference = section.get("reference") or {}
        ref = reference.get("images_per_s_per_gpu")
        ref_text = (f"{ref:.0f} ({reference['gpu']}, MFU {reference.get('mfu_at_h800_peak', 0):.0%} there)" if ref
                    else "not reported" if reference else "")
        rows = section.get("rows") or []
        if not rows:
            note = section.get("reason") or section.get("error") or ("see the checks below" if name == "checks" else "")
            lines.append(f"| {name} | {note[:120]} | | | | | | | | | {section['status']} |")
        for row in rows:
            status = row.get("status", "")
            if row.get("error"):
                status += f": {row['error'][:80]}"
            elif row.get("note"):
                status += f": {row['note']}"
            mfu = row.get("mfu")
            lines.append(
                f"| {name} | {row['case']} | {_fmt(row.get('batch'))} | "
                f"{_fmt(row.get('s_per_step', row.get('s_per_batch')))} | {_fmt(row.get('images_per_s'), 4)} | "
                f"{_fmt(row.get('peak_gib'))} | {_fmt(row.get('tflops'))} | {'' if mfu is None else f'{mfu:.1%}'} | "
                f"{_fmt(row.get('warmup_s'))} | {ref_text} | {status} |")
    checks = results["sections"].get("checks", {}).get("checks")
    lines += ["", "| check | status | detail |", "|---|---|---|"]
    for name in CHECKS:
        check = (checks or {}).get(name)
        if check is None:
            lines.append(f"| {name} | {results['sections'].get('checks', {}).get('status', 'skipped')} | not run |")
            continue
        detail = ", ".join(f"{k} {_fmt(v)}" for k, v in check.items() if k not in ("status", "traceback"))
        lines.append(f"| {name} | {check['status']} | {detail[:300]} |")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "tokenizer_vtp_L": lambda run: tokenizer_section(run, "vtp", "L"),
    "dit_XL1": lambda run: dit_section(run, "XL"),
    "dit_B1": lambda run: dit_section(run, "B"),
    "checks": checks_section,
    "latents_sampling": latents_sampling_section,
    "tokenizer_ae_L": lambda run: tokenizer_section(run, "ae", "L"),
    "tokenizer_vtp_B": lambda run: tokenizer_section(run, "vtp", "B"),
    "chain": chain_section,
}
# Seconds a section needs at least on the GPU; with less of the budget left it is skipped.
MIN_SECONDS = {"chain": 150.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, not the GPU")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget; later sections are skipped")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: table)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5; dry run 2)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="untimed steps first (default 2: a compile, then its recompile for the step number; dry run 1)")
    parser.add_argument("--max-batch", type=int, default=512, help="largest tokenizer batch tried (DiT: twice)")
    parser.add_argument("--compile-reserve-s", type=float, default=90.0,
                        help="a compiled case starts only with this much budget left")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the encode measure")
    parser.add_argument("--encode-batch", type=int, default=64)
    parser.add_argument("--sample-batch-fp32", type=int, default=16)
    parser.add_argument("--sample-batch-bf16", type=int, default=64)
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 5)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.dry_run else 2)
    if args.dry_run:
        args.compile_reserve_s, args.repeats = 0.0, 1
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry-run")
    run = Run(args)
    run.write()
    for name in SECTIONS:
        if name not in args.only:
            run.results["sections"][name] = {"status": "skipped", "reason": "not in --only"}
            continue
        needed = 0.0 if run.dry else MIN_SECONDS.get(name, 1.0)
        if run.remaining < needed:
            run.results["sections"][name] = {
                "status": "skipped", "reason": f"budget: {run.elapsed:.0f} s of --budget-s {args.budget_s:g} spent, "
                                               f"{max(run.remaining, 0):.0f} s left, the section needs ~{needed:.0f} s"}
            run.write()
            continue
        print(f"== {name} ({run.elapsed:.0f} s elapsed)", flush=True)
        started = time.monotonic()
        try:
            section = RUNNERS[name](run)
        except Exception as error:  # noqa: BLE001 - recorded, the next section runs
            section = {"status": "error", "error": f"{type(error).__name__}: {error}"[:2000],
                       "traceback": traceback.format_exc()[-3000:]}
        section["seconds"] = round(time.monotonic() - started, 1)
        run.results["sections"][name] = section
        run.reset_memory()
        run.write()
    run.results["meta"]["finished"] = True
    run.write()
    print((run.out / MARKDOWN_FILE).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
