"""L_rec = L1 + w_p * LPIPS: values, gradients, frozen LPIPS, and VGG weights loaded without a download."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from vtp_kedro.vtp.core.weights import WeightsNotFoundError
from vtp_kedro.vtp.losses.reconstruction import VGG16_WEIGHTS, ReconstructionLoss, ReconstructionLossConfig

STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def random_lpips_loss() -> ReconstructionLoss:
    return ReconstructionLoss(ReconstructionLossConfig(perceptual_backbone="random"))


def images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images_give_zero(random_lpips_loss):
    x = images(0)
    loss, metrics = random_lpips_loss(x, x.clone())
    assert loss.item() == 0.0
    assert metrics["lpips"].item() == 0.0 and metrics["l1"].item() == 0.0


def test_loss_is_l1_plus_weighted_lpips_and_gradient_reaches_reconstruction(random_lpips_loss):
    target, reconstruction = images(0), images(1).requires_grad_()
    loss, metrics = random_lpips_loss(reconstruction, target)
    assert metrics["lpips"].item() > 0
    torch.testing.assert_close(loss.detach(), metrics["l1"] + metrics["lpips"])
    loss.backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in random_lpips_loss.perceptual.parameters())


def test_zero_perceptual_weight_is_plain_l1_in_unit_range():
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(perceptual_weight=0.0, perceptual_backbone="vgg",
                                                          weights_dir="/nonexistent"))
    assert loss_fn.perceptual is None  # neither built nor resolved: no weights needed
    target, reconstruction = images(0), images(1).requires_grad_()
    loss, metrics = loss_fn(reconstruction, target)
    # normalised -> [-1, 1] maps a difference d to 2 * std * d.
    expected = (2 * STD * (reconstruction - target)).abs().mean()
    torch.testing.assert_close(loss, expected)
    assert set(metrics) == {"l1"}
    loss.backward()
    torch.testing.assert_close(reconstruction.grad, (2 * STD * torch.sign(reconstruction - target)).expand_as(
        reconstruction) / reconstruction.numel())


def test_lpips_keeps_shipped_linear_heads_and_stays_frozen_in_train_mode(random_lpips_loss):
    # The calibrated LPIPS heads are non-negative; a random init would not be.
    assert all((lin.model[1].weight >= 0).all() for lin in random_lpips_loss.perceptual.lins)
    random_lpips_loss.train()
    assert random_lpips_loss.training and not random_lpips_loss.perceptual.training
    x, y = images(0), images(1)
    first, _ = random_lpips_loss(x, y)
    second, _ = random_lpips_loss(x, y)
    assert first.item() == second.item()  # no dropout active


def test_rejects_mismatched_shapes(random_lpips_loss):
    with pytest.raises(ValueError, match="expected two"):
        random_lpips_loss(images(0, size=32), images(1, size=16))


def fake_vgg16_features(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    features = make_layers(cfgs["D"])  # torchvision's vgg16().features, without the big classifier
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def test_vgg_backbone_loads_resolved_torchvision_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    state = fake_vgg16_features(seed=3)
    torch.save(state, tmp_path / VGG16_WEIGHTS)
    loss_fn = ReconstructionLoss(ReconstructionLossConfig(weights_dir=str(tmp_path)))
    trunk = loss_fn.perceptual.net.state_dict()
    assert len(trunk) == 26  # the 13 convolutions of VGG16, weight and bias
    for key, value in trunk.items():
        torch.testing.assert_close(value, state[f"features.{key.split('.', 1)[1]}"], rtol=0, atol=0)


def test_vgg_backbone_found_in_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = fake_vgg16_features(seed=4)
    torch.save(state, checkpoints / VGG16_WEIGHTS)
    loss_fn = ReconstructionLoss(ReconstructionLossConfig())
    torch.testing.assert_close(getattr(loss_fn.perceptual.net.slice5, "28").weight, state["features.28.weight"])


def test_vgg_backbone_without_weights_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=VGG16_WEIGHTS):
        ReconstructionLoss(ReconstructionLossConfig())


def test_auto_backbone_uses_real_weights_when_found_and_l1_alone_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    images = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    without = ReconstructionLoss(ReconstructionLossConfig(perceptual_backbone="auto"))
    assert without.perceptual is None  # no random VGG stands in for the real one
    loss, metrics = without(*images)
    assert set(metrics) == {"l1", "perceptual"} and metrics["perceptual"] == 0
    torch.testing.assert_close(loss, metrics["l1"])
    state = fake_vgg16_features(seed=5)
    torch.save(state, tmp_path / VGG16_WEIGHTS)
    found = ReconstructionLoss(ReconstructionLossConfig(perceptual_backbone="auto", weights_dir=str(tmp_path)))
    torch.testing.assert_close(getattr(found.perceptual.net.slice5, "28").weight, state["features.28.weight"])
    loss, metrics = found(*images)
    assert metrics["perceptual"] == 1 and loss > metrics["l1"]


def test_wrong_weights_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / VGG16_WEIGHTS)
    with pytest.raises(ValueError, match=f"{VGG16_WEIGHTS}.*not a torchvision VGG16"):
        ReconstructionLoss(ReconstructionLossConfig(weights_dir=str(tmp_path)))


def test_config_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="perceptual_backbone"):
        ReconstructionLossConfig(perceptual_backbone="alex")


def test_the_random_vgg_lpips_is_one_network_whatever_ran_before_it():
    from vtp_kedro.vtp.losses.reconstruction import build_lpips

    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    first = build_lpips("random")
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left as it was
    torch.manual_seed(2)
    torch.rand(100)
    second = build_lpips("random")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
