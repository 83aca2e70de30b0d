"""Discriminators: taming's PatchGAN (shapes, init, size) and the heads on a frozen ViT trunk."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from vtp_kedro.vtp.models.discriminator import (
    DiscriminatorConfig,
    NLayerDiscriminator,
    ViTDiscriminator,
    build_discriminator,
    default_block_indices,
)
from vtp_kedro.vtp.models.vit import VisionTransformer, vit_config


def images(seed: int = 0, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trunk() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(vit_config("tiny"))  # depth 4, patch 4, 32 px: an 8 x 8 grid


@pytest.mark.parametrize(("size", "side"), [(32, 2), (64, 6), (256, 30)])
def test_patchgan_gives_one_logit_per_patch(size, side):
    disc = NLayerDiscriminator()
    assert disc(images(size=size)).shape == (2, 1, side, side)
    assert disc.receptive_field == 70


def test_patchgan_rejects_images_smaller_than_its_output_needs():
    with pytest.raises(ValueError, match="H, W >= 24"):
        NLayerDiscriminator()(images(size=16))


def test_patchgan_has_taming_size_and_layer_names():
    disc = NLayerDiscriminator()
    # conv 3->64 (+bias), conv 64->128, BN, conv 128->256, BN, conv 256->512 (stride 1), BN, conv 512->1 (+bias)
    expected = (3 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + 128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512 \
        + (512 * 16 + 1)
    assert expected == 2_765_633
    assert sum(p.numel() for p in disc.parameters()) == expected
    assert {key.rsplit(".", 1)[0] for key in disc.state_dict()} == {f"main.{i}" for i in (0, 2, 3, 5, 6, 8, 9, 11)}


def test_patchgan_init_follows_taming():
    torch.manual_seed(0)
    disc = NLayerDiscriminator()
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.01)
    scales = torch.cat([norm.weight for norm in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005)
    assert scales.std().item() == pytest.approx(0.02, rel=0.2)
    assert all((norm.bias == 0).all() for norm in norms)
    assert [conv.bias is not None for conv in convs] == [True, False, False, False, True]


def test_vit_heads_give_one_logit_per_token_and_head(trunk):
    disc = ViTDiscriminator(trunk, head_channels=16)
    assert disc.block_indices == (0, 1, 2, 3)
    assert disc(images()).shape == (2, 4 * 64)
    assert default_block_indices(12) == (2, 5, 8, 11) and default_block_indices(2) == (0, 1)


@pytest.mark.parametrize("pos_embed", ["rope", "learned"])
def test_block_tokens_mirror_the_trunk_forward(pos_embed):
    torch.manual_seed(0)
    vit = VisionTransformer(vit_config("tiny", pos_embed=pos_embed)).eval()
    disc = ViTDiscriminator(vit, block_indices=(1, 3))
    x = images()
    first, last = disc.block_tokens(x)
    torch.testing.assert_close(vit.norm(last), vit(x)[:, 1:])
    assert first.shape == last.shape == (2, 64, 192)


def test_trunk_is_frozen_and_stays_in_eval_mode(trunk):
    disc = ViTDiscriminator(trunk).train()
    assert disc.training and all(head.training for head in disc.heads)
    assert not any(module.training for module in disc.trunk.modules())
    assert not any(p.requires_grad for p in disc.trunk.parameters())
    disc.requires_grad_(False).requires_grad_(True)  # a GAN loop's per-step toggle
    assert not any(p.requires_grad for p in disc.trunk.parameters())
    assert all(p.requires_grad for p in disc.heads.parameters())
    # Shared, frozen in place: the tokenizer's frozen encoder is stored once, not copied.
    assert disc.trunk is trunk and not any(p.requires_grad for p in trunk.parameters())


def test_gradient_reaches_images_and_heads_but_not_trunk(trunk):
    disc = ViTDiscriminator(trunk, head_channels=16)
    x = images().requires_grad_()
    disc(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.heads.parameters())
    assert all(p.grad is None for p in disc.trunk.parameters())


def test_optimizer_step_changes_heads_only(trunk):
    disc = ViTDiscriminator(trunk, head_channels=16)
    before = {name: p.detach().clone() for name, p in disc.named_parameters()}
    optimizer = torch.optim.AdamW(disc.parameters(), lr=1e-2, weight_decay=0.1)
    disc(images()).mean().backward()
    optimizer.step()
    after = dict(disc.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items() if name.startswith("trunk."))
    assert all(not torch.equal(after[name], value) for name, value in before.items() if name.startswith("heads."))


def test_block_indices_are_validated(trunk):
    with pytest.raises(ValueError, match=r"block_indices \[4\] out of range .* depth 4"):
        ViTDiscriminator(trunk, block_indices=(1, 4))
    with pytest.raises(ValueError, match="distinct"):
        ViTDiscriminator(trunk, block_indices=(1, 1))
    with pytest.raises(pydantic.ValidationError, match="block_indices"):
        DiscriminatorConfig(kind="vit_heads", block_indices=(-1, 2))
    with pytest.raises(ValueError, match=r"block_indices \[7\] .* depth 4"):
        build_discriminator(DiscriminatorConfig(kind="vit_heads", block_indices=(3, 7)), trunk)


def test_build_discriminator(trunk):
    assert isinstance(build_discriminator(DiscriminatorConfig()), NLayerDiscriminator)
    disc = build_discriminator(DiscriminatorConfig(kind="vit_heads", block_indices=[3], head_channels=8), trunk)
    assert isinstance(disc, ViTDiscriminator) and disc(images()).shape == (2, 64)
    with pytest.raises(ValueError, match="'vit_heads' needs a ViT trunk"):
        build_discriminator(DiscriminatorConfig(kind="vit_heads"))


@pytest.mark.parametrize("key", ["base_channels", "layers", "head_channels"])
def test_config_rejects_non_positive_sizes(key):
    with pytest.raises(pydantic.ValidationError, match=key):
        DiscriminatorConfig(**{key: 0})
    with pytest.raises(pydantic.ValidationError, match="kind"):
        DiscriminatorConfig(kind="stylegan")
