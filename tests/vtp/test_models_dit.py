"""LightningDiT: config checks, preset sizes, adaLN-Zero, null class, gradients, positions, FLOPs."""

from __future__ import annotations

import pydantic
import pytest
import torch
from timm.layers import apply_rot_embed_cat
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vtp_kedro.vtp.models.dit import (
    DIT_PRESETS,
    DiTConfig,
    LightningDiT,
    TimestepEmbedder,
    dit_config,
    dit_forward_flops,
    sincos_pos_embed_2d,
)
from vtp_kedro.vtp.models.vit import apply_rope

# VTP's generation setting: 64-channel f16 latents of 256 px images, ImageNet classes.
VTP_LATENTS = dict(in_channels=64, input_size=16, num_classes=1000)


def tiny(seed: int = 0, **overrides) -> LightningDiT:
    torch.manual_seed(seed)
    config = dit_config("tiny", **{"in_channels": 16, "input_size": 8, "num_classes": 10, **overrides})
    return LightningDiT(config)


def inputs(model: LightningDiT, batch: int = 2, size: tuple[int, int] | None = None, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    size = size or (config.input_size, config.input_size)
    x = torch.randn(batch, config.in_channels, *size, generator=gen)
    t = torch.rand(batch, generator=gen)
    y = torch.randint(0, config.num_classes, (batch,), generator=gen)
    return x, t, y


def zero_init_layers(model: LightningDiT) -> list[torch.nn.Linear]:
    layers = [block.adaLN_modulation[-1] for block in model.blocks]
    return layers + [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]


def perturb_zero_init(model: LightningDiT, seed: int = 2) -> None:
    """Give the adaLN-Zero layers small random weights, as training would after a few steps."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for linear in zero_init_layers(model):
            linear.weight.normal_(std=0.02)
            linear.bias.normal_(std=0.02)


def expected_dit_params(width: int, depth: int, in_channels: int, patch: int, num_classes: int, ffn_hidden: int) -> int:
    """Parameter count written out by hand: SwiGLU, affine-free modulated norms, no QK-norm, fixed positions."""
    block = (
        3 * width * width + 3 * width  # qkv
        + width * width + width  # attention projection
        + 2 * (width * ffn_hidden + ffn_hidden) + ffn_hidden * width + width  # SwiGLU
        + width * 6 * width + 6 * width  # adaLN modulation
    )
    patch_dim = in_channels * patch * patch
    embedders = (
        patch_dim * width + width  # patch embedding
        + 256 * width + width + width * width + width  # timestep MLP
        + (num_classes + 1) * width  # class table + null class
    )
    final = width * 2 * width + 2 * width + width * patch_dim + patch_dim
    return embedders + depth * block + final


def test_presets_have_the_paper_sizes():
    assert {k: (v["depth"], v["width"], v["heads"]) for k, v in DIT_PRESETS.items()} == {
        "tiny": (4, 192, 3),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }
    config = dit_config("XL", **VTP_LATENTS)
    assert (config.patch_size, config.qk_norm, config.rope, config.norm) == (1, False, True, "rmsnorm")
    assert dit_config("B", patch_size=2, **VTP_LATENTS).grid_size == 8


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'H'"):
        dit_config("H", **VTP_LATENTS)


# Measured: B/1 130,389,568; L/1 457,906,208; XL/1 674,969,920 on 64x16x16 latents with 1000
# classes. LightningDiT-XL/1 (and DiT-XL/2) is reported as 675M. The reference's own XL/1 on its
# 32-channel VA-VAE latents counts 675,256,736: it also counts the frozen sin-cos table as a
# Parameter (+294,912) and gives its RMSNorms a weight (+57 * 1152 = 65,664), and its 32-channel
# patch embedding and output layer are 73,760 smaller than our 64-channel ones.
@pytest.mark.parametrize(
    ("preset", "ffn_hidden", "exact", "reference_millions"),
    [("B", 2048, 130_389_568, 130), ("L", 2730, 457_906_208, 458), ("XL", 3072, 674_969_920, 675)],
)
def test_preset_parameter_counts_on_meta(preset, ffn_hidden, exact, reference_millions):
    config = dit_config(preset, **VTP_LATENTS)
    assert config.ffn_hidden == ffn_hidden  # int(2/3 * 4 * width): no rounding up, as LightningDiT
    with torch.device("meta"):
        model = LightningDiT(config)
        out = model(torch.empty(2, 64, 16, 16), torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 64, 16, 16)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == exact
    assert n_params == expected_dit_params(config.width, config.depth, 64, 1, 1000, ffn_hidden)
    assert n_params / 1e6 == pytest.approx(reference_millions, rel=0.01)


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
def test_output_has_the_input_shape(patch_size, size):
    model = tiny(patch_size=patch_size)
    perturb_zero_init(model)
    x, t, y = inputs(model, size=size)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().amax() > 0


def test_unpatchify_inverts_the_patch_layout():
    model = tiny(patch_size=2)
    x = torch.randn(2, 16, 8, 12)
    p = 2
    # Token (i, j) holds its patch as (row in patch, column in patch, channel), the final layer's order.
    tokens = x.reshape(2, 16, 4, p, 6, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 24, p * p * 16)
    torch.testing.assert_close(model.unpatchify(tokens, (4, 6)), x, rtol=0, atol=0)


def test_fresh_model_is_adaln_zero():
    model = tiny()
    x, t, y = inputs(model, batch=4)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(torch.equal(out, args[0])))
    out = model(x, t, y)
    assert torch.equal(out, torch.zeros_like(x))
    assert seen == [True] * model.config.depth  # every block starts as the identity


def test_null_class_row_and_labels_change_the_output():
    model = tiny()
    assert model.null_class == 10
    assert model.y_embedder.weight.shape == (11, 192)
    x, t, _ = inputs(model, batch=3)
    labels = torch.tensor([0, 5, model.null_class])

    # Train from the zero init on a label-dependent target: the label reaches the output.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    target = torch.randn(11, 16, 1, 1)[labels]
    for _ in range(3):
        loss = (model(x, t, labels) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        same_x = x[:1].expand(3, -1, -1, -1)
        out = model(same_x, t[:1].expand(3), labels)
    assert (out[0] - out[1]).abs().amax() > 1e-6
    assert (out[0] - out[2]).abs().amax() > 1e-6  # conditional differs from unconditional


def test_model_is_deterministic_given_labels():
    model = tiny()
    perturb_zero_init(model)
    model.train()  # no dropout, no label drop: train and eval agree
    x, t, y = inputs(model)
    torch.testing.assert_close(model(x, t, y), model.eval()(x, t, y), rtol=0, atol=0)


def test_time_changes_the_output():
    model = tiny()
    perturb_zero_init(model)
    x, _, y = inputs(model, batch=1)
    assert (model(x, torch.zeros(1), y) - model(x, torch.ones(1), y)).abs().amax() > 1e-6


@pytest.mark.parametrize(("norm", "qk_norm"), [("rmsnorm", True), ("layernorm", False)])
def test_gradients_reach_every_parameter(norm, qk_norm):
    model = tiny(norm=norm, qk_norm=qk_norm)
    perturb_zero_init(model)
    x, t, y = inputs(model)
    model(x, t, y).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    # The modulated norms have no weight (adaLN scales them); only QK-norm has one.
    norm_params = [n for n, _ in model.named_parameters() if "norm" in n]
    assert all("attn.q_norm" in n or "attn.k_norm" in n for n in norm_params)
    assert len(norm_params) == (2 * model.config.depth if qk_norm else 0)


def test_zero_init_layers_get_gradient_only_at_the_output_first():
    model = tiny()
    x, t, y = inputs(model)
    model(x, t, y).square().mean().backward()
    # adaLN-Zero at step 0: the output Linear is the only layer with a signal (its input is non-zero).
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set()  # loss is out^2 = 0, so even its gradient is zero
    model.zero_grad()
    (model(x, t, y) - x).square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"final_layer.linear.weight", "final_layer.linear.bias"}


def test_same_seed_gives_identical_weights():
    a, b, c = tiny(seed=0), tiny(seed=0), tiny(seed=1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["blocks.0.attn.qkv.weight"], state_c["blocks.0.attn.qkv.weight"])


def test_init_follows_dit():
    model = tiny()
    for linear in zero_init_layers(model):
        assert not linear.weight.any() and not linear.bias.any()
    assert model.y_embedder.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.t_embedder.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    qkv = model.blocks[0].attn.qkv.weight
    bound = (6 / sum(qkv.shape)) ** 0.5  # xavier-uniform
    assert qkv.abs().amax() <= bound and qkv.abs().amax() > 0.9 * bound
    assert not model.blocks[0].attn.qkv.bias.any()
    proj = model.x_embedder.proj.weight  # initialised as a Linear (C*p*p -> width)
    assert proj.abs().amax() <= (6 / (proj.shape[0] + proj[0].numel())) ** 0.5
    assert not model.pos_embed.requires_grad and "pos_embed" not in model.state_dict()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (dict(input_size=9, patch_size=2), "input_size"),
        (dict(width=190, heads=4), "heads"),
        (dict(width=18, heads=3, rope=False), "width"),
        (dict(width=24, heads=4), "RoPE"),
        (dict(num_classes=0), "num_classes"),
        (dict(patch_size=0), "patch_size"),
        (dict(widht=192), "widht"),
    ],
)
def test_config_rejects_impossible_values_naming_them(overrides, needle):
    base = {"in_channels": 16, "input_size": 8, "num_classes": 10}
    with pytest.raises(pydantic.ValidationError, match=needle):
        dit_config("tiny", **{**base, **overrides})


def test_rope_off_allows_head_dims_rope_cannot_use():
    config = dit_config("tiny", in_channels=4, input_size=4, num_classes=2, width=24, heads=4, rope=False)
    model = LightningDiT(config)
    assert model.rope is None and config.head_dim == 6


def test_config_is_frozen():
    config = dit_config("tiny", in_channels=4, input_size=4, num_classes=2)
    with pytest.raises(pydantic.ValidationError):
        config.depth = 2
    assert isinstance(config, DiTConfig)


def test_bad_inputs_are_clear_errors():
    model = tiny()
    x, t, y = inputs(model)
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        model(x[:, :3], t, y)
    with pytest.raises(ValueError, match="9x8 is not a multiple of the patch size 2"):
        tiny(patch_size=2)(torch.randn(2, 16, 9, 8), t, y)
    with pytest.raises(ValueError, match="flow time"):
        model(x, t[:1], y)
    with pytest.raises(ValueError, match="integer labels"):
        model(x, t, y.float())


def test_timestep_embedding_is_dit_frequency_embedding_of_raw_t():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = TimestepEmbedder.frequency_embedding(t)
    assert emb.shape == (3, 256)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    # Frequency k is 10000^(-k/128); k = 0 is t itself (t enters unscaled, no * 1000).
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(0.5)))
    torch.testing.assert_close(emb[2, 128 + 64], torch.sin(torch.tensor(10000.0 ** (-0.5))))


def test_sincos_position_embedding_has_dit_layout():
    width, grid = 16, (3, 5)
    table = sincos_pos_embed_2d(width, grid)
    assert table.shape == (15, 16)
    row, col = 2, 3
    token = table[row * grid[1] + col]  # row-major
    omega = 1.0 / 10000 ** (torch.arange(4) / 4)
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(token, expected)
    model = tiny()
    torch.testing.assert_close(model.position_embedding((8, 8)), sincos_pos_embed_2d(192, (8, 8)))
    torch.testing.assert_close(model.position_embedding((2, 3)), sincos_pos_embed_2d(192, (2, 3)))


def lightningdit_rope_table(head_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """LightningDiT's VisionRotaryEmbeddingFast, rewritten: (h*w, 2*head_dim) sin|cos, interleaved pairs."""
    dim = head_dim // 2  # per axis
    freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
    row = (torch.arange(grid[0]).float()[:, None] * freqs).repeat_interleave(2, -1)  # (h, dim)
    col = (torch.arange(grid[1]).float()[:, None] * freqs).repeat_interleave(2, -1)  # (w, dim)
    angles = torch.cat(
        [row[:, None].expand(-1, grid[1], -1), col[None].expand(grid[0], -1, -1)], dim=-1
    ).reshape(-1, head_dim)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@pytest.mark.parametrize("head_dim", [64, 72])
def test_rope_is_lightningdits_up_to_a_channel_permutation(head_dim):
    grid = (4, 6)
    model = tiny(width=2 * head_dim, heads=2)
    ours = model.rope.get_embed(grid)
    reference = lightningdit_rope_table(head_dim, grid)
    # Reference pair (2i, 2i+1) is our pair (i, i + head_dim/2).
    perm = torch.arange(head_dim).reshape(2, head_dim // 2).T.reshape(-1)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 2, 24, head_dim, generator=gen).unbind(0)
    logits_ref = apply_rot_embed_cat(q, reference) @ apply_rot_embed_cat(k, reference).transpose(-1, -2)
    inv = torch.argsort(perm)
    logits_ours = apply_rope(q[..., inv], ours) @ apply_rope(k[..., inv], ours).transpose(-1, -2)
    torch.testing.assert_close(logits_ours, logits_ref, atol=1e-4, rtol=1e-4)


def test_flops_match_a_counted_forward():
    model = tiny(patch_size=2)
    x, t, y = inputs(model, batch=1)
    # The math backend runs attention as matmuls, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    assert counter.get_total_flops() == model.flops_per_sample() == dit_forward_flops(model.config)


def test_xl_flops_are_about_twice_the_parameters_per_token():
    config = dit_config("XL", **VTP_LATENTS)
    # 256 tokens * 2 * ~675M MACs each, plus attention: ~237 GFLOPs forward per 256 px image.
    assert dit_forward_flops(config) / 1e9 == pytest.approx(237.3, rel=0.01)
