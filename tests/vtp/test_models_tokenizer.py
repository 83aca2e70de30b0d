"""Visual tokenizer: normalisation, encode/decode shapes, PixelShuffle layout, features for the heads."""

from __future__ import annotations

import pydantic
import pytest
import torch

from vtp_kedro.vtp.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from vtp_kedro.vtp.models.tokenizer import PixelDecoder, TokenizerConfig, VisualTokenizer
from vtp_kedro.vtp.models.vit import vit_config


def tiny_tokenizer(**encoder_overrides) -> VisualTokenizer:
    torch.manual_seed(0)
    config = TokenizerConfig(
        encoder=vit_config("tiny", **encoder_overrides), latent_dim=16, decoder_width=128, decoder_depth=2, decoder_heads=2
    )
    return VisualTokenizer(config).eval()


def test_normalize_uses_imagenet_statistics_and_denormalize_inverts_it():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = normalize(images)
    torch.testing.assert_close(x[:, 1], (images[:, 1] - IMAGENET_MEAN[1]) / IMAGENET_STD[1])
    torch.testing.assert_close(denormalize(x), images)
    assert denormalize(torch.full((1, 3, 2, 2), 50.0)).max() == 1.0
    assert denormalize(torch.full((1, 3, 2, 2), -50.0)).min() == 0.0
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        normalize(torch.rand(2, 4, 8, 8))


@pytest.mark.parametrize(("patch", "size"), [(16, (32, 48)), (4, (32, 32)), (4, (16, 24))])
def test_encode_decode_round_trip_shapes(patch, size):
    model = tiny_tokenizer(patch_size=patch)
    images = torch.randn(2, 3, *size)
    z = model.encode(images)
    assert z.shape == (2, 16, size[0] // patch, size[1] // patch)
    assert model.decode(z).shape == images.shape
    assert model(images).shape == images.shape


def test_forward_features_carry_trunk_bottleneck_and_grid():
    model = tiny_tokenizer()
    images = torch.randn(2, 3, 16, 32)
    feats = model.forward_features(images)
    assert feats.grid == (4, 8)
    assert feats.trunk.shape == (2, 33, 192)
    assert feats.latent_tokens.shape == (2, 33, 16)
    torch.testing.assert_close(feats.latent_tokens, model.bottleneck(feats.trunk))
    torch.testing.assert_close(feats.latent(), model.encode(images))
    assert model.semantic_features(feats, "trunk") is feats.trunk
    assert model.semantic_features(feats, "bottleneck") is feats.latent_tokens
    with pytest.raises(ValueError, match="'pixels'"):
        model.semantic_features(feats, "pixels")
    assert model.bottleneck.bias is None


def test_masked_forward_features_differ_from_unmasked():
    model = tiny_tokenizer()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, ::3] = True
    with torch.no_grad():
        model.encoder.mask_token.normal_()
    assert not torch.allclose(model.forward_features(images, mask).trunk, model.forward_features(images).trunk)


def test_pixel_shuffle_places_each_channel_at_its_patch_offset():
    p, (h, w) = 4, (3, 5)
    torch.manual_seed(0)
    decoder = PixelDecoder(latent_dim=8, width=32, depth=1, heads=2, patch_size=p).eval()

    # Make the tokens after the final norm say where they are: feature 0 = row, feature 1 = column.
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    position = torch.zeros(1, h * w, 32)
    position[0, :, 0], position[0, :, 1] = rows.flatten().float(), cols.flatten().float()
    decoder.norm.register_forward_hook(lambda module, inputs, output: position.expand_as(output))

    # Channel c*p*p + i*p + j outputs 10000c + 1000i + 100j + 10*row + column.
    with torch.no_grad():
        decoder.proj_out.weight.zero_()
        decoder.proj_out.weight[:, 0, 0, 0] = 10.0
        decoder.proj_out.weight[:, 1, 0, 0] = 1.0
        for c in range(3):
            for i in range(p):
                for j in range(p):
                    decoder.proj_out.bias[c * p * p + i * p + j] = 10000 * c + 1000 * i + 100 * j
        out = decoder(torch.randn(2, 8, h, w))

    assert out.shape == (2, 3, h * p, w * p)
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(h * p), torch.arange(w * p), indexing="ij")
    expected = 10000 * c + 1000 * (y % p) + 100 * (x % p) + 10 * (y // p) + x // p
    torch.testing.assert_close(out[0], expected.float())
    torch.testing.assert_close(out[1], expected.float())


def test_decoder_uses_positions_of_latent_tokens():
    # Without position information swapping two latents would only swap their decoded patches.
    model = tiny_tokenizer()
    z = torch.randn(1, 16, 8, 8)
    swapped = z.clone()
    swapped[..., 0, 0], swapped[..., 5, 6] = z[..., 5, 6], z[..., 0, 0]
    out, out_swapped = model.decode(z), model.decode(swapped)
    patch = lambda img, r, c: img[..., 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]  # noqa: E731
    assert not torch.allclose(patch(out_swapped, 0, 0), patch(out, 5, 6), atol=1e-4)


def test_decoder_rejects_a_latent_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"\(B, 16, h, w\)"):
        tiny_tokenizer().decode(torch.randn(1, 64, 8, 8))


def test_decoder_config_is_checked():
    with pytest.raises(pydantic.ValidationError, match="decoder_heads"):
        TokenizerConfig(encoder=vit_config("tiny"), decoder_width=100, decoder_heads=3)


@pytest.mark.parametrize("preset", ["S", "B", "L"])
def test_paper_size_tokenizers_on_meta(preset):
    config = TokenizerConfig(encoder=vit_config(preset), decoder_width=1024, decoder_depth=24, decoder_heads=16)
    with torch.device("meta"):
        model = VisualTokenizer(config)
        images = torch.empty(2, 3, 256, 256)
        z = model.encode(images)
        feats = model.forward_features(images)
        recon = model.decode(z)
    assert z.shape == (2, 64, 16, 16)
    assert feats.trunk.shape == (2, 257, config.encoder.width)
    assert feats.latent_tokens.shape == (2, 257, 64)
    assert recon.shape == (2, 3, 256, 256)
    if preset == "L":
        # Paper Table 1: the ViT-L autoencoder (L encoder, 24-layer 1024-wide decoder) has 607.2M parameters.
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(607.2, rel=0.002)


def test_reconstruction_loss_falls_when_training_the_tokenizer():
    model = tiny_tokenizer().train()
    images = normalize(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = (model(images) - images).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
