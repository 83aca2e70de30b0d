"""CLIP projection, logit scale, DINO/iBOT head."""

from __future__ import annotations

import math

import pytest
import torch

from vtp_kedro.vtp.models.heads import CLIPProjection, DINOHead, LogitScale


def test_clip_projection_maps_cls_features_without_bias():
    proj = CLIPProjection(192, 64)
    assert proj(torch.randn(5, 192)).shape == (5, 64)
    assert proj.proj.bias is None
    assert sum(p.numel() for p in proj.parameters()) == 192 * 64


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    scale = LogitScale()
    assert scale.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    scale().backward()
    assert scale.log_scale.grad.item() == pytest.approx(1 / 0.07, rel=1e-6)  # d exp(s) / ds

    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    scale.log_scale.grad = None
    value = scale()
    assert value.item() == pytest.approx(100.0)
    value.backward()
    assert scale.log_scale.grad.item() == 0.0
    with pytest.raises(ValueError, match="init"):
        LogitScale(init=200.0)


def make_head(**kwargs) -> DINOHead:
    torch.manual_seed(0)
    return DINOHead(48, **{"prototypes": 100, "hidden_dim": 64, "bottleneck_dim": 16, **kwargs})


def test_dino_head_shapes_for_cls_and_patch_tokens():
    head = make_head()
    assert head(torch.randn(4, 48)).shape == (4, 100)
    assert head(torch.randn(37, 48)).shape == (37, 100)
    assert head(torch.randn(2, 5, 48)).shape == (2, 5, 100)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [64, 64, 16]


def test_dino_head_defaults_are_dinov2_paper_scale_on_meta():
    with torch.device("meta"):
        head = DINOHead(1024)
        out = head(torch.empty(3, 1024))
    assert out.shape == (3, 65536)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [2048, 2048, 256]


def test_dino_head_normalises_its_bottleneck():
    head = make_head()
    seen = []
    head.last_layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    head(torch.randn(8, 48) * 30)
    torch.testing.assert_close(seen[0].norm(dim=-1), torch.ones(8))


def test_dino_head_prototypes_are_weight_normed_with_a_trainable_gain_from_one():
    head = make_head()
    gain = head.last_layer.parametrizations.weight.original0
    assert gain.requires_grad and torch.all(gain == 1)
    # Rescaling the direction parameter changes nothing: rows are renormalised to the gain.
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(torch.rand(100, 1) * 10 + 0.1)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(100))
    assert head(torch.randn(16, 48)).abs().max() <= 1 + 1e-5  # at gain 1, cosine similarities
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        logits = head(torch.randn(16, 48))
        optimizer.zero_grad()
        (-logits[:, 0].mean()).backward()
        optimizer.step()
    assert gain[0] > 1  # the gain of the prototype pushed up has grown


def test_a_frozen_last_layer_gets_zero_gradients_while_the_mlp_learns():
    head = make_head()
    head(torch.randn(8, 48), freeze_last_layer=True).sum().backward()
    last = [p.grad for p in head.last_layer.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in last)
    assert all(torch.count_nonzero(p.grad) > 0 for p in head.mlp.parameters())
    head.zero_grad()
    head(torch.randn(8, 48)).sum().backward()
    assert all(torch.count_nonzero(p.grad) > 0 for p in head.last_layer.parameters())


def test_dino_head_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="prototypes"):
        DINOHead(48, prototypes=0)
