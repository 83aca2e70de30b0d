"""AdamW parameter groups: no decay for norms, biases, 1-D params and tokens; config validation."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from vtp_kedro.vtp.engine.optim import OptimizerConfig, build_adamw, decays, param_groups


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.register_tokens = nn.Parameter(torch.zeros(1, 4, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, 8))
        self.mask_token = nn.Parameter(torch.zeros(8))
        self.patch_embed = nn.Conv2d(3, 8, 4, 4)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 5, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def names_by_decay(module: nn.Module) -> tuple[set[str], set[str]]:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = param_groups(trainable, weight_decay=0.05)
    by_decay = {group["weight_decay"]: {name for name, _ in group["params"]} for group in groups}
    return by_decay.get(0.05, set()), by_decay.get(0.0, set())


def test_only_weight_matrices_are_decayed():
    decayed, not_decayed = names_by_decay(TinyViT())
    assert decayed == {"patch_embed.weight", "qkv.weight", "head.weight"}
    assert not_decayed == {"cls_token", "register_tokens", "pos_embed", "mask_token", "patch_embed.bias",
                           "norm.weight", "norm.bias", "qkv.bias", "logit_scale"}


def test_decay_rule_by_name_and_shape():
    matrix, vector = nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(4))
    assert decays("blocks.0.mlp.fc1.weight", matrix)
    assert not decays("blocks.0.norm1.weight", vector)
    assert not decays("blocks.0.attn.q_norm.weight", vector)  # QK-norm scale
    assert not decays("encoder.reg_token", matrix)
    assert not decays("decoder.pos_embed", matrix)
    assert not decays("text.logit_scale", nn.Parameter(torch.zeros(())))


def test_tied_weights_are_optimised_once_and_frozen_ones_refused():
    embedding = nn.Embedding(10, 4)
    tied = [("embed.weight", embedding.weight), ("lm_head.weight", embedding.weight)]
    groups = param_groups(tied, 0.1)
    assert [name for group in groups for name, _ in group["params"]] == ["embed.weight"]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="'w' does not require grad"):
        param_groups([("w", frozen.weight)], 0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups([], 0.1)


def test_build_adamw_settings_and_named_state():
    model = TinyViT()
    config = OptimizerConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, eps=1e-6)
    optimizer = build_adamw(((n, p) for n, p in model.named_parameters() if p.requires_grad), config)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    names = [n for g in optimizer.state_dict()["param_groups"] for n in g["param_names"]]
    assert "cls_token" in names and "qkv.weight" in names and "frozen.weight" not in names


def test_decay_changes_only_decayed_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_adamw(model.named_parameters(), OptimizerConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    optimizer.step()
    torch.testing.assert_close(model.weight, before["weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.bias, before["bias"])


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"betas": (0.9, 1.0)}, "betas"), ({"min_lr": 1.0, "lr": 0.1}, "min_lr"), ({"lr": 0}, "lr"),
    ({"grad_clip": 0}, "grad_clip"), ({"weight_decay": -1}, "weight_decay"), ({"momentum": 0.9}, "momentum")])
def test_config_rejects_impossible_values(kwargs, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        OptimizerConfig(**kwargs)


def test_layer_wise_decay_scales_each_block_by_the_factor_and_the_patch_embedding_further():
    from tests.vtp.test_vtp_model import small_config
    from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPModel, VTPTask

    torch.manual_seed(0)
    task = VTPTask(VTPModel(small_config("vtp")), 32)  # encoder depth 2
    config = OptimizerConfig(layer_decay=0.9, patch_embed_lr_mult=0.2)
    scale = {name: group["lr_scale"] for group in task.configure_optimizer(config).param_groups
             for name in group["param_names"]}
    block0 = scale["tokenizer.encoder.blocks.0.attn.qkv.weight"]
    block1 = scale["tokenizer.encoder.blocks.1.attn.qkv.weight"]
    assert block0 == pytest.approx(0.9 * block1) and block1 == pytest.approx(0.9)  # depth + 1 - (i + 1)
    assert scale["tokenizer.encoder.patch_embed.proj.weight"] == pytest.approx(0.2 * 0.9 ** 3)
    assert scale["tokenizer.encoder.cls_token"] == pytest.approx(0.9 ** 3)
    assert scale["tokenizer.encoder.norm.weight"] == 1.0 and scale["tokenizer.decoder.proj_out.weight"] == 1.0
    assert {n: s for n, s in scale.items() if n.startswith(("dino_head", "text."))} == \
        {n: 1.0 for n in scale if n.startswith(("dino_head", "text."))}
    plain = {group["lr_scale"] for group in task.configure_optimizer(OptimizerConfig()).param_groups}
    assert plain == {1.0}


def test_layer_decay_is_refused_where_a_task_has_no_vit_trunk():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no ViT trunk"):
        build_adamw(model.named_parameters(), OptimizerConfig(layer_decay=0.9))


def test_the_ssl_heads_take_their_own_learning_rate_factor():
    from tests.vtp.test_vtp_model import small_config
    from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPModel, VTPTask

    torch.manual_seed(0)
    config = small_config("vtp", ibot_separate_head=True)
    config = config.model_copy(update={"dino_head": config.dino_head.model_copy(update={"lr_mult": 0.1})})
    task = VTPTask(VTPModel(config), 32)
    scale = {name: group["lr_scale"] for group in task.configure_optimizer(OptimizerConfig()).param_groups
             for name in group["param_names"]}
    heads = {name for name in scale if name.startswith(("dino_head.", "ibot_head."))}
    assert heads and any(n.startswith("ibot_head.") for n in heads)
    assert all(scale[name] == pytest.approx(0.1) for name in heads)
    assert {scale[name] for name in scale.keys() - heads} == {1.0}
