"""The trainer for adversarial and frozen training: several optimizers, frozen parts, init_from."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.vtp.test_train_trainer import FEATURES, ToyData, assert_bit_identical, trainer_config
from vtp_kedro.vtp.engine import checkpoint as ckpt
from vtp_kedro.vtp.engine.optim import build_adamw
from vtp_kedro.vtp.engine.trainer import InitFromConfig, Trainer, TrainerConfig, TrainTask


class ToyGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(FEATURES, 4), nn.Dropout(0.5))  # frozen
        self.generator = nn.Linear(4, FEATURES)
        self.critic = nn.Sequential(nn.Linear(FEATURES, 8), nn.Dropout(0.1), nn.Linear(8, 1))


class ToyGANTask(TrainTask):
    """Generator then critic each step; the generator reads a frozen encoder under no_grad."""

    optimizer_names = ("generator", "critic")

    def __init__(self, crash_at_step: int | None = None, nan_critic_at: int | None = None) -> None:
        self.model = ToyGAN()
        self.crash_at_step, self.nan_critic_at = crash_at_step, nan_critic_at
        self.encoder_modes: list[bool] = []
        self.calls: list[tuple[int, str]] = []

    def training_step(self, batch: dict[str, Tensor], step: int, optimizer: str) -> tuple[Tensor, dict]:
        if step == self.crash_at_step:
            raise KeyboardInterrupt(f"simulated interruption at step {step}")
        self.calls.append((step, optimizer))
        self.encoder_modes.append(self.model.encoder.training)
        with torch.no_grad():
            code = self.model.encoder(batch["x"])
        fake = self.model.generator(code)
        if optimizer == "generator":
            rec = F.mse_loss(fake, batch["x"])
            adv = -self.model.critic(fake).mean()
            return rec + 0.1 * adv, {"rec": rec.detach()}
        real, fake_logits = self.model.critic(batch["x"]), self.model.critic(fake.detach())
        loss = F.relu(1 - real).mean() + F.relu(1 + fake_logits).mean()
        if step == self.nan_critic_at:
            loss = loss * float("nan")
        return loss, {"critic_loss": loss.detach()}

    def configure_optimizers(self, configs):
        return {"generator": build_adamw(self.model.generator.named_parameters(), configs["generator"]),
                "critic": build_adamw(self.model.critic.named_parameters(), configs["critic"])}

    def frozen_modules(self):
        return [self.model.encoder]


OPTIMIZERS = {"generator": {"lr": 0.01, "schedule": "constant", "weight_decay": 0.0, "grad_clip": None},
              "critic": {"lr": 0.001, "schedule": "constant", "weight_decay": 0.0, "grad_clip": 0.5}}


def gan_config(**overrides) -> TrainerConfig:
    values = {"budget": {"unit": "steps", "value": 6}, "optimizers": OPTIMIZERS, "log_every": 1,
              "checkpoint_every": 2, "device": "cpu", "keep_last": 5}
    values.update(overrides)
    return TrainerConfig.model_validate(values)


def fit_gan(run_dir: Path, config: TrainerConfig, **task_options) -> Trainer:
    torch.manual_seed(config.seed)
    trainer = Trainer(config, ToyGANTask(**task_options), ToyData(), run_dir)
    trainer.fit()
    return trainer


def test_each_optimizer_steps_its_own_parameters_at_its_own_rate_in_order(tmp_path):
    torch.manual_seed(0)
    task = ToyGANTask()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = Trainer(gan_config(budget={"unit": "steps", "value": 1}), task, ToyData(), tmp_path)
    trainer.fit()
    after = task.model.state_dict()
    # Adam's first update moves every weight by about lr (|m / sqrt(v)| = 1 at step 1).
    generator_step = (after["generator.weight"] - before["generator.weight"]).abs()
    critic_step = (after["critic.0.weight"] - before["critic.0.weight"]).abs()
    torch.testing.assert_close(generator_step, torch.full_like(generator_step, 0.01), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(critic_step, torch.full_like(critic_step, 0.001), rtol=1e-3, atol=1e-6)
    assert task.calls == [(0, "generator"), (0, "critic")]
    metrics = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert '"generator/lr": 0.01' in metrics[0] and '"critic/lr": 0.001' in metrics[0]
    assert '"critic/loss"' in metrics[0] and '"critic/grad_norm"' in metrics[0]


def test_frozen_module_keeps_its_weights_and_eval_mode(tmp_path):
    torch.manual_seed(0)
    task = ToyGANTask()
    frozen_before = {k: v.clone() for k, v in task.model.encoder.state_dict().items()}
    Trainer(gan_config(), task, ToyData(), tmp_path).fit()
    assert task.encoder_modes and not any(task.encoder_modes)  # model.train() did not switch it back
    assert task.model.critic.training and task.model.generator.training
    assert_bit_identical(frozen_before, task.model.encoder.state_dict())
    assert not any(p.requires_grad for p in task.model.encoder.parameters())


def test_a_frozen_module_given_to_an_optimizer_is_refused(tmp_path):
    class Leaky(ToyGANTask):
        def frozen_modules(self):
            return [self.model.encoder, self.model.generator]  # but the generator's optimizer still takes it

    with pytest.raises(ValueError, match="parameter 'weight' does not require grad"):
        Trainer(gan_config(), Leaky(), ToyData(), tmp_path).fit()


def test_two_optimizers_resume_bit_identically(tmp_path):
    config = gan_config(budget={"unit": "steps", "value": 8}, checkpoint_every=3)
    reference = fit_gan(tmp_path / "reference", config)
    with pytest.raises(KeyboardInterrupt):
        fit_gan(tmp_path / "resumed", config, crash_at_step=5)
    resumed = fit_gan(tmp_path / "resumed", config)
    assert resumed.resumed_from.name == "step_00000003"
    assert_bit_identical(reference.task.model.state_dict(), resumed.task.model.state_dict())
    final = [ckpt.load_checkpoint(t.last_checkpoint)["optimizer"] for t in (reference, resumed)]
    assert set(final[0]) == {"generator", "critic"}
    for name, param in (("generator", "model.generator.weight"), ("critic", "model.critic.0.weight")):
        assert_bit_identical(final[0][name]["state"][param], final[1][name]["state"][param])
        assert final[0][name]["param_groups"][0]["lr"] == OPTIMIZERS[name]["lr"]


def test_a_non_finite_step_skips_only_that_optimizer(tmp_path):
    config = gan_config(budget={"unit": "steps", "value": 3}, checkpoint_every=1)
    trainer = fit_gan(tmp_path, config, nan_critic_at=1)
    before, after = (ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.checkpoint_name(s))["model"] for s in (1, 2))
    assert torch.equal(before["critic.0.weight"], after["critic.0.weight"])  # the critic's step was skipped
    assert not torch.equal(before["generator.weight"], after["generator.weight"])  # the generator's was not
    assert trainer.nonfinite_total == 1


def test_optimizer_settings_must_match_the_task(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['critic'\], unknown \['discriminator'\]"):
        Trainer(gan_config(optimizers={"generator": {}, "discriminator": {}}), ToyGANTask(), ToyData(), tmp_path).fit()
    with pytest.raises(ValueError, match="set trainer.optimizers"):
        Trainer(trainer_config(), ToyGANTask(), ToyData(), tmp_path).fit()
    with pytest.raises(pydantic.ValidationError, match="either optimizer"):
        gan_config(optimizer={"lr": 0.1})
    with pytest.raises(ValueError, match=r"optimizers.critic.warmup_steps \(9\)"):
        fit_gan(tmp_path / "warm", gan_config(optimizers={**OPTIMIZERS, "critic": {"warmup_steps": 9}}))


def test_init_from_copies_weights_into_a_new_run_with_a_strict_check(tmp_path):
    torch.manual_seed(1)
    source = ToyGAN()
    ckpt.save_tensors({f"tokenizer.{k}": v for k, v in source.encoder.state_dict().items()}
                      | {"other.w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    config = gan_config(budget={"unit": "steps", "value": 2},
                        init_from={"path": str(tmp_path / "weights.safetensors"), "source_prefix": "tokenizer.",
                                   "target": "encoder"})
    trainer = fit_gan(tmp_path / "run", config)
    assert_bit_identical(source.encoder.state_dict(), trainer.task.model.encoder.state_dict())
    # A resumed run reads its own checkpoint, not init_from (which may have changed meanwhile).
    ckpt.save_tensors({f"tokenizer.{k}": v + 1 for k, v in source.encoder.state_dict().items()},
                      tmp_path / "weights.safetensors")
    again = fit_gan(tmp_path / "run", config)
    assert_bit_identical(source.encoder.state_dict(), again.task.model.encoder.state_dict())

    ckpt.save_tensors({"0.weight": torch.zeros(4, 5), "extra": torch.zeros(1)}, tmp_path / "bad.safetensors")
    bad = gan_config(init_from={"path": str(tmp_path / "bad.safetensors"), "target": "encoder"})
    with pytest.raises(ValueError, match=r"does not fit: missing \['0.bias'\], unexpected \['extra'\], shape mismatches "
                                         r"\['0.weight: \(4, 5\) in the source, \(4, 6\) in the model'\]"):
        fit_gan(tmp_path / "bad_run", bad)
    with pytest.raises(ValueError, match="'nope' is not a submodule"):
        fit_gan(tmp_path / "bad_target", gan_config(init_from={"path": str(tmp_path / "bad.safetensors"),
                                                               "target": "nope"}))
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        fit_gan(tmp_path / "no_weights", gan_config(init_from={"path": str(tmp_path / "run" / "logs")}))
    assert InitFromConfig(path="x").target == ""
