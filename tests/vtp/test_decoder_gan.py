"""The decoder GAN stage: GAN term and discriminator switch on at their steps, the encoder is frozen
(latents bit-identical), both optimizers resume bit-identically, the ViT discriminator shares the encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vtp_kedro.vtp import load_tokenizer
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.engine.trainer import Trainer, TrainerConfig
from vtp_kedro.vtp.inference import save_tokenizer
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig, VisualTokenizer
from vtp_kedro.vtp.models.vit import vit_config
from vtp_kedro.vtp.stages.decoder_gan import DecoderGANTaskConfig, build_task
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, write_captioned_shards

TOKENIZER = TokenizerConfig(encoder=vit_config("tiny", width=64, heads=1, depth=2, patch_size=4, image_size=32),
                            latent_dim=8, decoder_width=64, decoder_depth=1, decoder_heads=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gan")
    torch.manual_seed(0)
    save_tokenizer(root / "tokenizer", VisualTokenizer(TOKENIZER).state_dict(), TOKENIZER, 32)
    write_captioned_shards(root / "shards", SyntheticConfig(image_size=32), 48, 16)
    return {"tokenizer": root / "tokenizer", "shards": root / "shards"}


def task_config(inputs, **gan) -> dict:
    return {"model": {"tokenizer": TOKENIZER.model_dump(mode="json"),
                      "gan": {"disc_start": 2, "gan_start": 3, **gan},
                      "reconstruction": {"perceptual_weight": 0.0}},  # L1 only: fast
            "data": {"shards": str(inputs["shards"]), "image_size": 32, "batch_size": 4, "num_workers": 0,
                     "shuffle_buffer": 16, "captions": False}}


def trainer_config(inputs, steps: int = 5, **overrides) -> TrainerConfig:
    optimizer = {"lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0}
    return TrainerConfig.model_validate({
        "budget": {"unit": "steps", "value": steps}, "log_every": 1, "checkpoint_every": 2, "device": "cpu",
        "optimizers": {"generator": optimizer, "discriminator": {**optimizer, "lr": 5e-4}},
        "init_from": {"path": str(inputs["tokenizer"]), "target": "tokenizer"}, **overrides})


def fit(run_dir: Path, inputs, config: TrainerConfig | None = None, crash_at: int | None = None, **gan) -> Trainer:
    torch.manual_seed(0)
    task, data = build_task(DecoderGANTaskConfig.model_validate(task_config(inputs, **gan)))
    if crash_at is not None:
        step_fn = task.training_step

        def crashing(batch, step, optimizer):
            if step == crash_at:
                raise KeyboardInterrupt(f"killed at step {step}")
            return step_fn(batch, step, optimizer)

        task.training_step = crashing
    trainer = Trainer(config or trainer_config(inputs), task, data, run_dir)
    trainer.fit()
    return trainer


def log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_gan_term_and_discriminator_start_at_their_steps_and_the_encoder_stays_frozen(inputs, tmp_path):
    trainer = fit(tmp_path, inputs, diff_augment="color,translation,cutout", latent_noise_tau=0.2)
    records = {r["step"]: r for r in log(tmp_path)}  # record k: the step k-1 that was just taken
    assert [records[k]["d_loss"] == 0 for k in range(1, 6)] == [True, True, False, False, False]
    assert [records[k]["g_adv"] == 0 and records[k]["adaptive_weight"] == 0 for k in range(1, 6)] == \
        [True, True, True, False, False]
    assert all(records[k]["adaptive_weight"] > 0 for k in (4, 5))
    assert all(0 <= records[k]["d_accuracy_real"] <= 1 for k in records)

    model = trainer.task.model
    before, after = load_tokenizer(inputs["tokenizer"]), model.tokenizer
    for name, value in before.net.state_dict().items():
        frozen = name.startswith(("encoder.", "bottleneck."))
        assert torch.equal(after.state_dict()[name], value) == frozen or "rope" in name, name
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    exported = ckpt.load_checkpoint(trainer.last_checkpoint)["model"]
    save_tokenizer(tmp_path / "gan_tokenizer", {k.removeprefix("tokenizer."): v for k, v in exported.items()
                                                if k.startswith("tokenizer.")}, TOKENIZER, 32)
    tuned = load_tokenizer(tmp_path / "gan_tokenizer")
    assert torch.equal(tuned.encode(images), before.encode(images))  # latents bit-identical
    assert not torch.equal(tuned.decode(before.encode(images)), before.decode(before.encode(images)))
    assert not any(m.training for m in (model.tokenizer.encoder, model.tokenizer.bottleneck))


def test_the_stage_resumes_bit_identically_after_a_kill(inputs, tmp_path):
    settings = {"diff_augment": "translation,cutout", "latent_noise_tau": 0.3}
    reference = fit(tmp_path / "reference", inputs, **settings)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "resumed", inputs, crash_at=3, **settings)
    resumed = fit(tmp_path / "resumed", inputs, **settings)
    assert resumed.resumed_from.name == "step_00000002"
    a, b = reference.task.model.state_dict(), resumed.task.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    states = [ckpt.load_checkpoint(t.last_checkpoint)["optimizer"] for t in (reference, resumed)]
    for name in ("generator", "discriminator"):
        for key, value in states[0][name]["state"].items():
            assert torch.equal(value["exp_avg"], states[1][name]["state"][key]["exp_avg"]), (name, key)


def test_vit_heads_discriminator_reads_the_shared_frozen_encoder(inputs, tmp_path):
    task, _ = build_task(DecoderGANTaskConfig.model_validate({**task_config(inputs), "model": {
        **task_config(inputs)["model"], "discriminator": {"kind": "vit_heads", "block_indices": [0, 1]}}}))
    model = task.model
    assert model.discriminator.trunk is model.tokenizer.encoder
    trainable = {n for group in task.configure_optimizers(trainer_config(inputs).optimizer_configs(
        task.optimizer_names))["discriminator"].param_groups for n in group["param_names"]}
    assert trainable and all(n.startswith("discriminator.heads.") for n in trainable)
    trainer = fit(tmp_path, inputs, trainer_config(inputs, steps=3))  # patchgan run as a baseline for size
    ckpt.save_tensors(model.state_dict(), tmp_path / "vit.safetensors")
    stored = ckpt.load_tensors(tmp_path / "vit.safetensors")
    assert stored["discriminator.trunk.blocks.0.attn.qkv.weight"] is stored["tokenizer.encoder.blocks.0.attn.qkv.weight"]
    assert trainer.step == 3


def test_task_config_is_checked(inputs):
    with pytest.raises(ValueError, match="images only"):
        DecoderGANTaskConfig.model_validate({**task_config(inputs), "data": {
            **task_config(inputs)["data"], "captions": True}})
    with pytest.raises(ValueError, match=r"image_size \(30\) must be a multiple of the patch size \(4\)"):
        DecoderGANTaskConfig.model_validate({**task_config(inputs), "data": {
            **task_config(inputs)["data"], "image_size": 30}})
