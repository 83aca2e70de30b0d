"""The VTP task under the trainer: a real run on embedded shards, and 2 gloo ranks = 1 process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.vtp.test_vtp_model import embedded_batch
from vtp_kedro.vtp.core.config import Config
from vtp_kedro.vtp.core.distributed import rank, world_size
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.engine.trainer import Trainer, TrainerConfig
from vtp_kedro.vtp.launch.launcher import LauncherConfig, launch
from vtp_kedro.vtp.stages import Stage
from vtp_kedro.vtp.stages.registry import register_stage
from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPConfig, VTPModel, VTPTask
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards

REPO = Path(__file__).resolve().parents[2]
MODEL = {
    "tokenizer": {"encoder": {"width": 64, "depth": 1, "heads": 1, "patch_size": 4, "image_size": 32},
                  "latent_dim": 16, "decoder_width": 64, "decoder_depth": 1, "decoder_heads": 1},
    "text": {"width": 64, "heads": 1, "layers": 1, "context_length": 32},
    "embed_dim": 64,
    "reconstruction": {"perceptual_backbone": "random"},
    "dino_head": {"prototypes": 128, "hidden_dim": 128, "bottleneck_dim": 32},
    "ssl": {"out_dim": 128, "teacher_temperature_warmup_steps": 2},
    "multicrop": {"global_size": 32, "local_size": 16, "local_crops": 2},
    "ssl_fraction": 0.5,
    "rec_fraction": 0.5,
}
TRAINER = {"budget": {"unit": "steps", "value": 4}, "optimizer": {"lr": 1e-3, "warmup_steps": 1},
           "log_every": 1, "checkpoint_every": 2, "device": "cpu"}


def write_config(path: Path, task: dict[str, Any], stage: str = "tokenizer_pretraining", **trainer: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imports = [] if stage == "tokenizer_pretraining" else [__name__]
    path.write_text(json.dumps({"job": "train", "trainer": {**TRAINER, **trainer}, "stage": stage,
                                "imports": imports, "task": task}))
    return path


def test_vtp_trains_from_embedded_shards_and_checkpoints_reload(tmp_path: Path) -> None:
    write_captioned_shards(tmp_path / "shards", SyntheticConfig(), count=64, samples_per_shard=16)
    task = {"model": MODEL, "data": {"shards": str(tmp_path / "shards"), "image_size": 32, "batch_size": 8,
                                     "num_workers": 0, "context_length": 32}}
    final = launch(write_config(tmp_path / "config.json", task), tmp_path / "run", LauncherConfig())
    checkpoint = ckpt.load_checkpoint(final)
    assert checkpoint["step"] == 4
    model = VTPModel(VTPConfig.model_validate(MODEL))
    model.load_state_dict(checkpoint["model"])  # strict: the checkpoint is complete
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"rec", "l1", "lpips", "clip", "ssl", "dino", "ibot", "koleo", "teacher_cls_entropy", "flops"} <= records[-1].keys()


def test_task_flops_and_teacher_update() -> None:
    torch.manual_seed(0)
    model = VTPModel(VTPConfig.model_validate({**MODEL, "text": {**MODEL["text"], "context_length": 77}}))
    task = VTPTask(model, image_size=32)
    batch = embedded_batch(8)
    assert task.flops_per_step(batch) > 0
    before = model.teacher.encoder.cls_token.clone()
    with torch.no_grad():
        model.tokenizer.encoder.cls_token.add_(1.0)
    task.after_optimizer_step(0, 10)
    assert not torch.equal(model.teacher.encoder.cls_token, before)


class FixedBatches:
    """The same global batch of 8 embedded pairs every step; each rank takes its half."""

    def __init__(self) -> None:
        batch = embedded_batch(8)
        local = 8 // world_size()
        rows = slice(rank() * local, (rank() + 1) * local)
        self.batch = {"images": batch["images"][rows], "tokens": batch["tokens"][rows, :32]}
        self.index = 0

    def __iter__(self):
        while True:
            self.index += 1
            yield self.batch

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state["index"]


class NoSettings(Config):
    pass


def make_clip_ae_on_fixed_batches(settings: NoSettings) -> tuple[VTPTask, FixedBatches]:
    """clip_ae with every image reconstructed: no per-rank sub-batch draw, so 2 ranks x 4 = 1 x 8."""
    config = VTPConfig.model_validate({**MODEL, "objective": "clip_ae", "rec_fraction": 1.0})
    return VTPTask(VTPModel(config, rank=rank()), image_size=32), FixedBatches()


register_stage(Stage("clip_ae_on_fixed_batches", NoSettings, make_clip_ae_on_fixed_batches))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process_through_gathered_clip(tmp_path: Path, monkeypatch, parallel: str) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    factory = "clip_ae_on_fixed_batches"
    single = launch(write_config(tmp_path / "one.json", {}, factory), tmp_path / "one", LauncherConfig())
    two = launch(write_config(tmp_path / "two.json", {}, factory, parallel=parallel), tmp_path / "two",
                 LauncherConfig(kind="torchrun", nproc_per_node=2))
    expected, actual = ckpt.load_checkpoint(single)["model"], ckpt.load_checkpoint(two)["model"]
    del expected["_extra_state"], actual["_extra_state"]  # each rank's own sub-batch generator
    torch.manual_seed(TRAINER.get("seed", 0))  # the initial weights, as the entry point builds them
    initial = make_clip_ae_on_fixed_batches(NoSettings())[0].model.state_dict()
    mask_token = "tokenizer.encoder.mask_token"  # unused without masks, never decayed: still its initial value
    assert torch.equal(expected[mask_token], initial[mask_token]) and torch.equal(actual[mask_token], initial[mask_token])
    # Softmax ignores the text attention's key bias, so its gradient is rounding noise that
    # Adam scales up to +-lr: compare it loosely.
    key_bias = "text.transformer.transformer.resblocks.0.attn.in_proj_bias"
    torch.testing.assert_close(actual[key_bias], expected[key_bias], rtol=0, atol=4 * TRAINER["optimizer"]["lr"])
    # Every other tensor took the same training update to within 1%. Adam normalises each
    # element, so an element whose gradient sits at rounding level moves visibly differently
    # under another (equally right) reduction order; a wrong all-reduce or a missing gather
    # changes whole tensors' updates by far more.
    for name in expected.keys() - {key_bias}:
        update = torch.linalg.vector_norm(expected[name].float() - initial[name].float())
        difference = torch.linalg.vector_norm(actual[name].float() - expected[name].float())
        assert update > 0 or difference == 0, name
        assert difference <= 0.01 * update + 1e-7, f"{name}: {difference:.3g} against an update of {update:.3g}"
    # The CLIP loss of the 2-rank run is over the gathered global batch of 8, as in one process.
    one_log = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_log = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert two_log[0]["clip"] == pytest.approx(one_log[0]["clip"], rel=1e-4)


@pytest.mark.slow
def test_vtp_killed_and_resumed_ends_bit_identical(tmp_path: Path) -> None:
    """A real training process killed with SIGKILL after its first checkpoint, then resumed."""
    import signal
    import subprocess
    import sys
    import time

    write_captioned_shards(tmp_path / "shards", SyntheticConfig(), count=128, samples_per_shard=16)
    task = {"model": MODEL, "data": {"shards": str(tmp_path / "shards"), "image_size": 32, "batch_size": 8,
                                     "num_workers": 2, "context_length": 32}}
    trainer = {"budget": {"unit": "steps", "value": 16}, "checkpoint_every": 4, "log_every": 4}
    reference = launch(write_config(tmp_path / "ref.json", task, **trainer), tmp_path / "ref", LauncherConfig())

    config = write_config(tmp_path / "killed" / "config.json", task, **trainer)
    process = subprocess.Popen([sys.executable, "-m", "vtp_kedro.vtp.launch", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "killed" / "checkpoints" / "step_00000004"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists() and not (tmp_path / "killed" / "checkpoints" / "step_00000016").exists()

    resumed = launch(config, tmp_path / "killed", LauncherConfig())
    result = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert result["resumed_from"] is not None and result["step"] == 16
    expected, actual = ckpt.load_checkpoint(reference)["model"], ckpt.load_checkpoint(resumed)["model"]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.parametrize("objective", ["ae", "vtp"])
def test_a_flops_budget_of_the_vtp_task_is_spent_within_one_step(tmp_path: Path, objective: str) -> None:
    """A scaling point: 2.5 steps' worth of the task's analytic FLOPs buys 3 steps, B <= F < B + F_step."""
    torch.manual_seed(0)
    model = {**MODEL, "objective": objective, "reconstruction": {"perceptual_weight": 0.0}}
    task = VTPTask(VTPModel(VTPConfig.model_validate(model)), image_size=32)
    data = FixedBatches()
    step_flops = task.flops_per_step(data.batch)  # the expected iBOT mask: not a whole number
    budget = 2.5 * step_flops
    config = TrainerConfig.model_validate({**TRAINER, "budget": {"unit": "flops", "value": budget},
                                           "checkpoint_every": 100, "optimizer": {"lr": 1e-3}})
    trainer = Trainer(config, task, data, tmp_path)
    trainer.fit()
    assert trainer.step == 3
    assert budget <= trainer.flops < budget + step_flops


def test_activation_checkpointing_keeps_the_gradients() -> None:
    batch = embedded_batch(8)
    batch["tokens"] = batch["tokens"][:, :32]
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        task = VTPTask(VTPModel(VTPConfig.model_validate(MODEL)), image_size=32)
        task.set_activation_checkpointing(checkpointing)
        wrapped = sum("checkpoint_wrapped_module" in name for name, _ in task.model.named_modules())
        assert (wrapped > 0) == checkpointing
        loss, _ = task.training_step(batch, 0)
        loss.backward()
        grads.append({name.replace("._checkpoint_wrapped_module", ""): p.grad
                      for name, p in task.named_trainable_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_training_curves_panels_and_scales() -> None:
    from vtp_kedro.vtp.engine.curves import plot_curves

    records = [{"step": s, "rec": 1.0 / s, "clip": 4.0 - s, "koleo": 0.5 - s, "lr": 1e-3} for s in (1, 2, 3)]
    losses, health, optimisation = plot_curves(records, "t").axes
    assert [line.get_label() for line in losses.get_lines()] == ["rec", "clip"]
    assert losses.get_yscale() == "log"
    assert health.get_yscale() == "linear"  # KoLeo goes negative: no log scale
    assert [line.get_label() for line in optimisation.get_lines()] == ["lr"]
