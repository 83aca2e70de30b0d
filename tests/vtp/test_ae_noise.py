"""ae_noise: the ae preset plus the decoder GAN stage's latent-noise regulariser in pre-training
(the scaling study's non-semantic control)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tests.vtp.test_vtp_model import embedded_batch, small_config
from vtp_kedro.vtp import scaling
from vtp_kedro.vtp.losses import gan
from vtp_kedro.vtp.stages import tokenizer_pretraining
from vtp_kedro.vtp.stages.flops import training_step_flops
from vtp_kedro.vtp.stages.tokenizer_pretraining import OBJECTIVE_LATENT_NOISE, VTPModel


def test_the_preset_is_ae_with_noise_and_only_it_sets_noise():
    assert small_config("ae_noise").lambdas == small_config("ae").lambdas == (0.1, 0.0, 0.0)
    assert small_config("ae_noise").noise_tau == OBJECTIVE_LATENT_NOISE["ae_noise"] > 0
    for objective in ("ae", "clip_ae", "ssl_ae", "vtp"):
        assert small_config(objective).noise_tau == 0.0
    assert small_config("vtp", latent_noise_tau=0.3).noise_tau == 0.3  # configured on another preset
    assert small_config("ae_noise", latent_noise_tau=0.0).noise_tau == 0.0
    with pytest.raises(ValidationError, match="latent_noise_tau"):
        small_config("ae_noise", latent_noise_tau=-0.1)
    # the same FLOPs as ae (the noise adds no matrix product), so the two share the grid's budgets
    assert training_step_flops(small_config("ae_noise"), 8, 32) == training_step_flops(small_config("ae"), 8, 32)
    grid = scaling.ScalingGridConfig(objective=("ae", "ae_noise", "vtp"), budget_flops=(1e13,))
    assert [point.name for point in scaling.expand_grid(grid)][1] == "ae_noise_1e13flops_default_all_bottleneck"


def test_the_pretraining_noise_is_the_gan_stages_function(monkeypatch):
    """One implementation: the stage calls losses.gan.latent_noise with the preset's tau and its sampler."""
    calls = []

    def spy(z, tau, generator):
        calls.append(tau)
        return gan.latent_noise(z, tau, generator)

    monkeypatch.setattr(tokenizer_pretraining, "latent_noise", spy)
    assert tokenizer_pretraining.latent_noise is spy and gan.latent_noise is not spy
    torch.manual_seed(0)
    model = VTPModel(small_config("ae_noise")).train()
    model.training_step(embedded_batch(4), 0)
    assert calls == [OBJECTIVE_LATENT_NOISE["ae_noise"]]


def _models(objective: str, **overrides) -> tuple[VTPModel, VTPModel]:
    """``objective``'s model and ae's with the same weights and sampler seed."""
    torch.manual_seed(0)
    model = VTPModel(small_config(objective, **overrides))
    reference = VTPModel(small_config("ae"))
    reference.load_state_dict(model.state_dict())
    return model, reference


def test_the_noise_is_applied_only_in_training_and_only_where_configured():
    batch = embedded_batch(8)
    model, ae = _models("ae_noise")
    noisy, _ = model.train().training_step(batch, 0)
    clean, _ = ae.train().training_step(batch, 0)
    assert not torch.allclose(noisy, clean)  # same weights, same sub-batch: only the noise differs
    model, ae = _models("ae_noise")
    state = model.sampler.get_state()
    with torch.no_grad():
        latent = model.tokenizer.encode(batch["images"][:4])
        model.eval()
        evaluated, _ = model.reconstruction_objective(latent, batch["images"][:4])
        assert torch.equal(model.sampler.get_state(), state)  # nothing drawn in eval mode
        assert torch.equal(evaluated, ae.eval().reconstruction_objective(latent, batch["images"][:4])[0])
        # the tokenizer itself (what latent extraction and evaluation use) never adds noise
        assert torch.equal(model.tokenizer.encode(batch["images"][:4]), latent)
    # an objective without noise draws nothing in training either (its steps are those of before)
    for objective in ("ae", "vtp"):
        torch.manual_seed(0)
        plain = VTPModel(small_config(objective)).train()
        with torch.no_grad():
            latent = plain.tokenizer.encode(batch["images"][:4])
            state = plain.sampler.get_state()
            plain.reconstruction_objective(latent, batch["images"][:4])
        assert torch.equal(plain.sampler.get_state(), state)
    # configured on vtp, it is applied there
    torch.manual_seed(0)
    noisy_vtp = VTPModel(small_config("vtp", latent_noise_tau=0.3)).train()
    with torch.no_grad():
        state = noisy_vtp.sampler.get_state()
        noisy_vtp.reconstruction_objective(noisy_vtp.tokenizer.encode(batch["images"][:4]), batch["images"][:4])
    assert not torch.equal(noisy_vtp.sampler.get_state(), state)


def _losses(seed: int, steps: int, count: int = 16) -> list[float]:
    torch.manual_seed(0)  # the same initial weights; the noise comes from the config's seed
    model = VTPModel(small_config("ae_noise", seed=seed)).train()
    batch = embedded_batch(count)
    optimizer = torch.optim.AdamW([p for _, p in model.named_trainable_parameters()], lr=3e-3)
    rec = []
    for step in range(steps):
        loss, metrics = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.append(float(metrics["rec"]))
    return rec


def test_ae_noise_trains_and_is_reproducible_with_its_seed():
    rec = _losses(seed=0, steps=25)
    first, last = sum(rec[:3]) / 3, sum(rec[-3:]) / 3
    assert last < 0.8 * first, f"L_rec fell from {first:.3f} to {last:.3f} only"
    assert _losses(seed=0, steps=3) == rec[:3]  # the same seed, the same noise and losses
    assert _losses(seed=1, steps=3)[1:] != rec[1:3]  # another seed, other noise (and sub-batches)
