"""ViT trunk: config checks, preset sizes, variable image size, mask token, QK-norm and RoPE."""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F

from vtp_kedro.vtp.models.vit import (
    VIT_PRESETS,
    Attention,
    Block,
    VisionTransformer,
    ViTConfig,
    apply_rope,
    axial_rope,
    vit_config,
)


def tiny(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(vit_config("tiny", **overrides)).eval()


def expected_vit_params(width: int, depth: int, heads: int, patch: int, ffn_hidden: int) -> int:
    """Parameter count of the ViT written out by hand (SwiGLU FFN, RMSNorm, QK-norm, RoPE)."""
    head_dim = width // heads
    block = (
        width  # norm1
        + 3 * width * width + 3 * width  # qkv
        + 2 * head_dim  # q_norm, k_norm
        + width * width + width  # proj
        + width  # norm2
        + 2 * (width * ffn_hidden + ffn_hidden) + ffn_hidden * width + width  # SwiGLU
    )
    patch_embed = 3 * patch * patch * width + width
    return patch_embed + 2 * width + depth * block + width  # + cls, mask token, final norm


def test_presets_have_the_paper_sizes():
    assert {k: (v["width"], v["depth"], v["heads"]) for k, v in VIT_PRESETS.items() if k != "tiny"} == {
        "S": (384, 12, 6),
        "B": (768, 12, 12),
        "L": (1024, 24, 16),
    }
    assert vit_config("B").patch_size == 16
    assert vit_config("B", drop_path=0.1).drop_path == 0.1


@pytest.mark.parametrize(
    ("preset", "ffn_hidden", "approx_millions"),
    [("tiny", 512, 1.8), ("S", 1024, 21.6), ("B", 2048, 85.6), ("L", 2736, 303.5)],
)
def test_preset_shapes_and_parameter_counts_on_meta(preset, ffn_hidden, approx_millions):
    config = vit_config(preset)
    with torch.device("meta"):
        model = VisionTransformer(config)
        side = config.image_size
        out = model(torch.empty(2, 3, side, side))
    n_tokens = 1 + (side // config.patch_size) ** 2
    assert out.shape == (2, n_tokens, config.width)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected_vit_params(config.width, config.depth, config.heads, config.patch_size, ffn_hidden)
    assert n_params / 1e6 == pytest.approx(approx_millions, rel=0.01)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (dict(width=200, heads=3), "divisible by heads"),
        (dict(width=18, heads=3), "RoPE"),
        (dict(image_size=30), "multiple of patch_size"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(widht=192), "widht"),
    ],
)
def test_config_rejects_impossible_values_naming_them(overrides, needle):
    with pytest.raises(pydantic.ValidationError, match=needle):
        vit_config("tiny", **overrides)


def test_learned_position_embedding_does_not_need_rope_head_dim():
    assert ViTConfig(width=18, depth=1, heads=3, pos_embed="learned").head_dim == 6


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'XL'"):
        vit_config("XL")


@pytest.mark.parametrize("pos_embed", ["rope", "learned"])
@pytest.mark.parametrize("size", [(32, 32), (16, 48), (64, 24)])
def test_other_image_sizes_work(pos_embed, size):
    model = tiny(pos_embed=pos_embed)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1 + (size[0] // 4) * (size[1] // 4), 192)
    assert torch.isfinite(out).all()


def test_image_size_not_a_multiple_of_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="30x32 is not a multiple of the patch size 4"):
        tiny()(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny()(torch.randn(1, 1, 32, 32))


def test_gradients_reach_every_parameter():
    model = tiny(layer_scale=1e-5, drop_path=0.1).train()
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, :10] = True
    model(torch.randn(2, 3, 32, 32), mask).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_mask_token_replaces_masked_patches():
    model = tiny()
    with torch.no_grad():
        model.mask_token.normal_()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, 9] = True  # token 9 = grid row 1, column 1 = pixels [4:8, 4:8]
    base = model(images, mask)

    edited_masked = images.clone()
    edited_masked[..., 4:8, 4:8] += 5.0
    torch.testing.assert_close(model(edited_masked, mask), base)

    edited_visible = images.clone()
    edited_visible[..., 0:4, 0:4] += 5.0
    assert not torch.allclose(model(edited_visible, mask), base, atol=1e-4)

    # All patches masked: the content is invisible, only the mask token and positions remain.
    full = torch.ones(2, 64, dtype=torch.bool)
    out = model(torch.randn(2, 3, 32, 32), full)
    torch.testing.assert_close(out[0], out[1])


def test_mask_of_wrong_shape_or_dtype_is_rejected():
    model = tiny()
    with pytest.raises(ValueError, match=r"shape \(2, 64\)"):
        model(torch.randn(2, 3, 32, 32), torch.zeros(2, 63, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        model(torch.randn(2, 3, 32, 32), torch.zeros(2, 64))


def capture_sdpa(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the q and k that reach scaled_dot_product_attention."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.detach(), k.detach()))
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_normalises_every_head(monkeypatch, qk_norm):
    seen = capture_sdpa(monkeypatch)
    model = tiny(qk_norm=qk_norm)
    model(torch.randn(2, 3, 32, 32))
    assert len(seen) == model.config.depth
    for q, k in seen:
        # RoPE is a rotation, so per-head RMS 1 from the norm survives it.
        rms_q, rms_k = q.square().mean(-1).sqrt(), k.square().mean(-1).sqrt()
        normalised = torch.allclose(rms_q, torch.ones_like(rms_q), atol=1e-3) and torch.allclose(
            rms_k, torch.ones_like(rms_k), atol=1e-3
        )
        assert normalised == qk_norm


def test_rope_rotates_patch_tokens_but_not_cls(monkeypatch):
    seen = capture_sdpa(monkeypatch)
    model = tiny()
    normed = []
    model.blocks[0].attn.q_norm.register_forward_hook(lambda m, i, o: normed.append(o.detach()))
    model(torch.randn(1, 3, 32, 32))
    before, after = normed[0], seen[0][0]
    torch.testing.assert_close(after[:, :, 0], before[:, :, 0])  # CLS: no position
    assert (after[:, :, 1:] - before[:, :, 1:]).abs().amax() > 0.1
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1))


@pytest.mark.parametrize("use_rope", [False, True])
def test_permuting_patches_matters_only_with_rope(use_rope):
    torch.manual_seed(0)
    attn = Attention(64, 2).eval()
    grid = (4, 4)
    rope = axial_rope(32).get_embed(grid) if use_rope else None
    x = torch.randn(1, 1 + 16, 64)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    x_perm = torch.cat([x[:, :1], x[:, 1:][:, perm]], dim=1)
    out, out_perm = attn(x, rope), attn(x_perm, rope)
    equivariant = torch.allclose(out_perm[:, 1:], out[:, 1:][:, perm], atol=1e-5) and torch.allclose(
        out_perm[:, 0], out[:, 0], atol=1e-5
    )
    assert equivariant == (not use_rope)


def test_rope_scores_depend_only_on_position_differences():
    head_dim, (h, w) = 32, (4, 5)
    rope = axial_rope(head_dim).get_embed((h, w))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=gen).expand(h * w, head_dim)
    k = torch.randn(head_dim, generator=gen).expand(h * w, head_dim)
    scores = apply_rope(q, rope) @ apply_rope(k, rope).T
    by_offset: dict[tuple[int, int], list[float]] = {}
    for a in range(h * w):
        for b in range(h * w):
            offset = (b // w - a // w, b % w - a % w)
            by_offset.setdefault(offset, []).append(scores[a, b].item())
    for values in by_offset.values():
        assert max(values) - min(values) < 1e-4
    assert len({round(v[0], 3) for v in by_offset.values()}) > 10  # and positions do change the score


def test_apply_rope_rejects_a_table_longer_than_the_sequence():
    with pytest.raises(ValueError, match="16 positions"):
        apply_rope(torch.randn(1, 2, 8, 32), axial_rope(32).get_embed((4, 4)))


def test_layer_scale_starts_every_block_near_the_identity():
    """DINOv2's LayerScale 1e-5: each residual branch enters scaled by 1e-5, so a fresh block
    passes its input through almost unchanged (without it, the branches are O(1))."""
    torch.manual_seed(0)
    x = torch.randn(2, 17, 192)
    for layer_scale, low, high in ((1e-5, 0.0, 1e-4), (None, 0.1, 10.0)):
        block = Block(192, 3, layer_scale=layer_scale)
        change = ((block(x) - x).norm() / x.norm()).item()
        assert low <= change < high, (layer_scale, change)


def test_block_options_layer_scale_drop_path_and_ffn():
    model = tiny(layer_scale=1e-4, drop_path=0.2, ffn="mlp")
    first, last = model.blocks[0], model.blocks[-1]
    assert torch.all(first.ls1.gamma == 1e-4)
    assert last.drop_path1.drop_prob == pytest.approx(0.2)
    assert first.drop_path1.drop_prob == 0.0  # linear rule: block 0 never dropped
    assert first.mlp.fc1.out_features == 4 * 192
    swiglu = Block(192, 3)
    assert swiglu.mlp.fc1_g.out_features == 512  # 2/3 * 768, multiple of 8


def test_presets_name_their_choices_when_a_name_is_unknown():
    from vtp_kedro.vtp.models.dit import dit_config
    from vtp_kedro.vtp.models.text import text_config

    assert vit_config("tiny", depth=1).depth == 1 and vit_config("tiny").width == VIT_PRESETS["tiny"]["width"]
    for make, kind in ((vit_config, "ViTConfig"), (text_config, "TextConfig"), (dit_config, "DiTConfig")):
        with pytest.raises(ValueError, match=f"unknown {kind} preset 'Q'; choose one of"):
            make("Q")
