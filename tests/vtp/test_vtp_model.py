"""VTPModel: the joint objective, its presets, sub-batch sampling, teacher and FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vtp_kedro.vtp.data.preprocess import normalize, tokenize
from vtp_kedro.vtp.data.transforms import MultiCropConfig
from vtp_kedro.vtp.models.text import TextConfig
from vtp_kedro.vtp.models.tokenizer import TokenizerConfig
from vtp_kedro.vtp.models.vit import ViTConfig
from vtp_kedro.vtp.stages.flops import training_step_flops
from vtp_kedro.vtp.stages.tokenizer_pretraining import OBJECTIVE_PRESETS, VTPConfig, VTPModel
from vtp_kedro.vtp.synthetic.generator import SyntheticConfig, render_sample

PRESETS = list(OBJECTIVE_PRESETS)


def small_config(objective: str, **overrides) -> VTPConfig:
    """A model small enough for many CPU steps in a test; every part of the paper model is there."""
    encoder = ViTConfig(width=64, depth=2, heads=1, patch_size=4, image_size=32)
    return VTPConfig(
        tokenizer=TokenizerConfig(encoder=encoder, latent_dim=16, decoder_width=64, decoder_depth=1, decoder_heads=1),
        text=TextConfig(width=64, heads=1, layers=1),
        embed_dim=64,
        objective=objective,
        reconstruction={"perceptual_backbone": "random"},
        dino_head={"prototypes": 128, "hidden_dim": 128, "bottleneck_dim": 32},
        ssl={"out_dim": 128, "teacher_temperature_warmup_steps": 10},
        multicrop=MultiCropConfig(global_size=32, local_size=16, local_crops=2),
        ssl_fraction=0.5,
        rec_fraction=0.5,
        **overrides,
    )


def embedded_batch(count: int) -> dict[str, torch.Tensor]:
    samples = [render_sample(SyntheticConfig(), "train", i) for i in range(count)]
    pixels = torch.stack([
        torch.frombuffer(bytearray(s.image.tobytes()), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1)
        for s in samples
    ]).float() / 255
    return {"images": normalize(pixels), "tokens": tokenize([s.caption for s in samples])}


def count_calls(module: torch.nn.Module | None) -> list[int]:
    calls = [0]
    if module is not None:
        module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("objective", PRESETS)
def test_each_preset_computes_exactly_its_losses(objective: str) -> None:
    torch.manual_seed(0)
    model = VTPModel(small_config(objective))
    lambda_rec, lambda_ssl, lambda_clip = model.config.lambdas
    assert lambda_rec == 0.1 and (lambda_ssl, lambda_clip) == OBJECTIVE_PRESETS[objective]
    text = count_calls(getattr(model, "text", None))
    teacher = count_calls(getattr(model, "teacher", None) and model.teacher.encoder)
    decoder = count_calls(model.tokenizer.decoder)
    loss, metrics = model.training_step(embedded_batch(8), step=0)
    loss.backward()

    assert decoder[0] == 1 and "rec" in metrics and "lpips" in metrics
    assert (text[0] == 1) == (lambda_clip > 0) == ("clip" in metrics) == hasattr(model, "text")
    assert (teacher[0] == 1) == (lambda_ssl > 0) == ("ssl" in metrics) == hasattr(model, "teacher")
    expected = lambda_rec * metrics["rec"]
    expected += lambda_ssl * metrics["ssl"] if lambda_ssl else 0
    expected += lambda_clip * metrics["clip"] if lambda_clip else 0
    assert torch.allclose(loss.detach(), expected)
    if lambda_ssl:
        assert {"dino", "ibot", "koleo", "teacher_cls_entropy"} <= metrics.keys()
        assert all(p.grad is None for p in model.teacher.parameters())


def test_explicit_lambdas_override_the_preset() -> None:
    config = small_config("vtp", lambda_ssl=0.0, lambda_clip=0.5)
    assert config.lambdas == (0.1, 0.0, 0.5)
    with pytest.raises(ValueError, match="lambda_rec"):
        small_config("ae", lambda_rec=0.0)


def test_sub_batches_are_reproducible_from_the_seed() -> None:
    batch = embedded_batch(8)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = VTPModel(small_config("vtp", seed=3))
        losses.append([float(model.training_step(batch, step)[0].detach()) for step in range(2)])
    assert losses[0] == losses[1]
    torch.manual_seed(0)
    other = VTPModel(small_config("vtp", seed=4))
    assert float(other.training_step(batch, 0)[0].detach()) != losses[0][0]


def test_state_dict_round_trip_keeps_sampler_and_drops_lpips() -> None:
    torch.manual_seed(0)
    model = VTPModel(small_config("vtp"))
    model.training_step(embedded_batch(4), 0)
    state = model.state_dict()
    assert not any("perceptual" in key for key in state)
    restored = VTPModel(small_config("vtp"))
    restored.load_state_dict(state)  # strict: every key present
    assert torch.equal(restored.sampler.get_state(), model.sampler.get_state())


def test_teacher_follows_the_student_by_ema() -> None:
    torch.manual_seed(0)
    model = VTPModel(small_config("ssl_ae"))
    with torch.no_grad():
        model.tokenizer.bottleneck.weight.add_(1.0)
    before = model.teacher.bottleneck.weight.clone()
    momentum = model.update_teacher(step=0, total_steps=10)
    assert momentum == pytest.approx(0.992)
    expected = momentum * before + (1 - momentum) * model.tokenizer.bottleneck.weight
    assert torch.allclose(model.teacher.bottleneck.weight, expected)


def balanced_config(objective: str, **overrides) -> VTPConfig:
    """``small_config`` reshaped so that no part of a step dominates its FLOPs: LPIPS off, a deeper
    decoder and text tower, a wider DINO head. With each part at 5% or more, a formula that left
    one out would miss a counted step by more than the 2% the FLOPs test allows."""
    encoder = ViTConfig(width=64, depth=2, heads=1, patch_size=4, image_size=32)
    values = dict(
        tokenizer=TokenizerConfig(encoder=encoder, latent_dim=16, decoder_width=64, decoder_depth=2, decoder_heads=1),
        text=TextConfig(width=64, heads=1, layers=2, context_length=32),
        embed_dim=64,
        objective=objective,
        reconstruction={"perceptual_weight": 0.0},
        dino_head={"prototypes": 1024, "hidden_dim": 256, "bottleneck_dim": 64},
        multicrop=MultiCropConfig(global_size=32, local_size=16, local_crops=2),
        ssl_fraction=0.5,
        rec_fraction=0.5,
    )
    return VTPConfig(**(values | overrides))


def counted_step(model: VTPModel, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """(FLOPs of one forward + backward step as FlopCounterMode counts them, forward FLOPs per
    top-level module class).

    Attention runs on SDPA's math backend: the fused CPU kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) has no entry in FlopCounterMode's registry,
    so under it QK^T and AV would silently go uncounted (13-16% of this config's step).
    """
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            loss, _ = model.training_step(batch, 0)
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    modules = {name: float(sum(ops.values())) for name, ops in forward.get_flop_counts().items()
               if "." not in name and name != "Global"}
    return forward.get_total_flops() + backward.get_total_flops(), modules


@pytest.mark.parametrize("objective", PRESETS)
@pytest.mark.parametrize("semantic_features", ["bottleneck", "trunk"])
def test_analytic_flops_match_a_counted_step_within_2_percent(objective: str, semantic_features: str) -> None:
    torch.manual_seed(0)
    config = balanced_config(objective, semantic_features=semantic_features)
    _, lambda_ssl, lambda_clip = config.lambdas
    batch = embedded_batch(8)
    batch["tokens"] = batch["tokens"][:, :32]
    counted, modules = counted_step(VTPModel(config), batch)
    analytic = training_step_flops(config, batch_size=8, image_size=32)

    # The premise: every part this preset runs carries a real share of the (forward) FLOPs.
    # The bottleneck is a bare nn.Linear called on the encoder's output: it counts with the encoder.
    families = {"encoder": modules["VisionTransformer"] + modules["Linear"], "decoder": modules["PixelDecoder"]}
    if lambda_clip:
        families["text tower"] = modules["TextEncoder"]
    if lambda_ssl:
        families["DINO head"] = modules["DINOHead"]
    shares = {name: flops / sum(modules.values()) for name, flops in families.items()}
    assert min(shares.values()) >= 0.05, shares
    objectives = {name: flops / analytic["total"] for name, flops in analytic.items() if name != "total"}
    assert set(objectives) == {"reconstruction", *["clip"] * (lambda_clip > 0), *["ssl"] * (lambda_ssl > 0)}
    assert min(objectives.values()) >= 0.1, objectives

    assert analytic["total"] == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize("objective", ["ae", "vtp"])
def test_analytic_lpips_flops_match_a_counted_step_within_2_percent(objective: str) -> None:
    """The frozen VGG16 of LPIPS (forward on both images, input gradient on the reconstruction)."""
    torch.manual_seed(0)
    config = balanced_config(objective, reconstruction={"perceptual_backbone": "random"})
    batch = embedded_batch(8)
    batch["tokens"] = batch["tokens"][:, :32]
    counted, modules = counted_step(VTPModel(config), batch)
    analytic = training_step_flops(config, batch_size=8, image_size=32)["total"]
    assert modules["ReconstructionLoss"] > 0.5 * sum(modules.values())  # LPIPS is the bulk of this step
    assert analytic == pytest.approx(counted, rel=0.02)

@pytest.mark.slow
@pytest.mark.parametrize("objective", PRESETS)
def test_fifty_steps_overfit_64_embedded_images(objective: str) -> None:
    torch.manual_seed(0)
    model = VTPModel(small_config(objective))
    batch = embedded_batch(64)
    optimizer = torch.optim.AdamW([p for _, p in model.named_trainable_parameters()], lr=2e-3)
    rec = []
    for step in range(50):
        loss, metrics = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(step, 50)
        rec.append(float(metrics["rec"]))
        assert torch.isfinite(loss)
    first, last = sum(rec[:5]) / 5, sum(rec[-5:]) / 5
    assert last < 0.7 * first, f"L_rec fell from {first:.3f} to {last:.3f} only"


def test_the_teacher_stays_in_eval_mode_and_deterministic_when_the_student_trains() -> None:
    torch.manual_seed(0)
    config = small_config("vtp")
    config = config.model_copy(update={"tokenizer": config.tokenizer.model_copy(
        update={"encoder": config.tokenizer.encoder.model_copy(update={"drop_path": 0.5})})})
    model = VTPModel(config).train()
    assert model.tokenizer.encoder.training and not model.teacher.training
    assert not any(module.training for module in model.teacher.modules())
    images = embedded_batch(2)["images"]
    with torch.no_grad():
        first, second = (model.teacher["encoder"](images) for _ in range(2))
        student = [model.tokenizer.encoder(images) for _ in range(2)]
    assert torch.equal(first, second)  # no drop path in the teacher
    assert not torch.equal(*student)  # while the student's is active


def test_the_mask_token_does_not_dominate_the_first_gradient() -> None:
    torch.manual_seed(0)
    model = VTPModel(small_config("ssl_ae")).train()
    loss, _ = model.training_step(embedded_batch(8), 0)
    loss.backward()
    norms = {name: p.grad.norm() for name, p in model.named_trainable_parameters() if p.grad is not None}
    encoder = torch.stack([n for name, n in norms.items() if name.startswith("tokenizer.encoder.")]).norm()
    share = norms["tokenizer.encoder.mask_token"] / encoder
    assert model.tokenizer.encoder.mask_token.std() > 0.01
    assert share < 0.5, f"the mask token carries {share:.2f} of the encoder's gradient norm"


@pytest.mark.parametrize("separate", [False, True])
def test_the_prototypes_stay_frozen_for_their_first_steps(separate: bool) -> None:
    torch.manual_seed(0)
    config = small_config("ssl_ae", ibot_separate_head=separate)
    model = VTPModel(config.model_copy(update={"dino_head": config.dino_head.model_copy(
        update={"freeze_last_layer_steps": 2})})).train()
    batch = embedded_batch(4)
    heads = [model.dino_head] + ([model.ibot_head] if separate else [])
    for step, frozen in ((1, True), (2, False)):
        model.zero_grad()
        model.training_step(batch, step)[0].backward()
        for head in heads:
            grads = [p.grad for p in head.last_layer.parameters()]
            assert all(g is not None for g in grads)
            assert all(torch.count_nonzero(g) == 0 for g in grads) == frozen
            assert torch.count_nonzero(head.mlp[0].weight.grad) > 0


def test_a_separate_ibot_head_scores_the_masked_patches_alone() -> None:
    """With ``ibot_separate_head`` the masked patches go through ``ibot_head`` (student and EMA
    teacher) and the CLS tokens through ``dino_head``: changing the iBOT head changes the iBOT
    term and leaves the DINO term as it was."""
    torch.manual_seed(0)
    shared = VTPModel(small_config("ssl_ae"))
    assert not hasattr(shared, "ibot_head") and "ibot_head" not in shared.teacher
    model = VTPModel(small_config("ssl_ae", ibot_separate_head=True)).train()
    assert torch.equal(model.teacher.ibot_head.mlp[0].weight, model.ibot_head.mlp[0].weight)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.ibot_head.mlp[0].weight.mul_(3.0)
        changed.teacher.ibot_head.mlp[0].weight.mul_(3.0)
    calls = {name: count_calls(getattr(model, name)) for name in ("dino_head", "ibot_head")}
    calls |= {f"teacher.{name}": count_calls(model.teacher[name]) for name in ("dino_head", "ibot_head")}
    batch = embedded_batch(8)
    _, metrics = model.training_step(batch, 0)
    _, changed_metrics = changed.training_step(batch, 0)
    # The student's DINO head scores the global crops and the local crops; the other heads run once.
    assert {name: c[0] for name, c in calls.items()} == {"dino_head": 2, "ibot_head": 1,
                                                          "teacher.dino_head": 1, "teacher.ibot_head": 1}
    assert torch.equal(metrics["dino"], changed_metrics["dino"])
    assert not torch.allclose(metrics["ibot"], changed_metrics["ibot"])


@pytest.mark.parametrize("objective, counts", [("ae", (8, 0, 0)), ("vtp", (8, 8, 16))])  # fractions 0.5
def test_each_objective_reports_the_images_it_used(objective: str, counts: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    _, metrics = VTPModel(small_config(objective)).training_step(embedded_batch(16), 0)
    assert tuple(float(metrics[f"samples_{name}"]) for name in ("rec", "ssl", "clip")) == tuple(map(float, counts))


def test_each_objective_pass_uses_its_own_drop_path_rate() -> None:
    torch.manual_seed(0)
    rates = {"clip": 0.0, "ssl": 0.5, "rec": 0.2}
    for objective, expected in (("vtp", [0.0, 0.5, 0.5]), ("ssl_ae", [0.2, 0.5, 0.5])):
        model = VTPModel(small_config(objective, drop_path=rates)).train()
        seen: list[float] = []
        last = model.tokenizer.encoder.blocks[-1].drop_path1
        last.register_forward_pre_hook(lambda module, args: seen.append(module.drop_prob))
        model.training_step(embedded_batch(4), 0)
        assert seen == pytest.approx(expected)  # the first pass (CLIP, or reconstruction alone), then the crops
        assert model.tokenizer.encoder.blocks[0].drop_path1.drop_prob == 0.0  # timm's linear schedule from 0
        assert not model.teacher["encoder"].blocks[-1].training
    both = small_config("vtp").model_dump()
    both["tokenizer"]["encoder"]["drop_path"], both["drop_path"] = 0.1, rates
    with pytest.raises(ValueError, match="not both"):
        VTPConfig.model_validate(both)


def texture_batch(generator: torch.Generator, count: int = 32) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Four classes that survive DINO's augmentations (random colours, crops, flips, blur): horizontal
    stripes, vertical stripes, a checkerboard (period 8 px, random phase) and a flat image."""
    labels = torch.randint(0, 4, (count,), generator=generator)
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    phase = torch.randint(0, 8, (count, 2), generator=generator)
    patterns = []
    for index in range(count):
        y, x = (rows + phase[index, 0]) // 4 % 2, (cols + phase[index, 1]) // 4 % 2
        patterns.append([y, x, (y + x) % 2, torch.zeros_like(y)][labels[index]].float())
    pattern = torch.stack(patterns)[:, None]
    ink, paper = torch.rand(count, 3, 1, 1, generator=generator), torch.rand(count, 3, 1, 1, generator=generator)
    pixels = (ink * pattern + paper * (1 - pattern) + 0.05 * torch.randn(count, 3, 32, 32, generator=generator))
    return {"images": normalize(pixels.clamp(0, 1)), "tokens": torch.zeros(count, 8, dtype=torch.long)}, labels


def teacher_entropy_gap(head_lr_mult: float, steps: int = 120) -> float:
    """log-K-scale gap between the batch-mean target's entropy and the per-row entropy after
    ``steps`` of ssl_ae at lr 1e-3 with ``dino_head.lr_mult`` applied as the trainer applies it:
    0 when the teacher says the same for every image."""
    from vtp_kedro.vtp.engine.optim import OptimizerConfig
    from vtp_kedro.vtp.stages.tokenizer_pretraining import VTPTask

    torch.manual_seed(0)
    config = small_config("ssl_ae", teacher_momentum=(0.996, 1.0))
    config = config.model_copy(update={"ssl_fraction": 1.0, "dino_head": config.dino_head.model_copy(
        update={"lr_mult": head_lr_mult})})
    task = VTPTask(VTPModel(config), 32)
    model = task.model.train()
    optimizer = task.configure_optimizer(OptimizerConfig(lr=1e-3, weight_decay=0.04))
    for group in optimizer.param_groups:  # the trainer's rule: base rate x the group's scale
        group["lr"] = 1e-3 * group["lr_scale"]
    generator, gaps = torch.Generator().manual_seed(0), []
    for step in range(steps):
        loss, metrics = model.training_step(texture_batch(generator)[0], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(step, steps)
        gaps.append(float(metrics["teacher_cls_mean_entropy"] - metrics["teacher_cls_entropy"]))
    return sum(gaps[-20:]) / 20


@pytest.mark.slow
def test_the_ssl_heads_learn_image_dependent_targets_only_at_a_lower_learning_rate() -> None:
    """At the backbone's 1e-3 the DINO head flattens every image's targets towards uniform (the
    collapse the CPU default showed); at a tenth of it, the teacher's targets stay image-dependent."""
    low, high = teacher_entropy_gap(0.1), teacher_entropy_gap(1.0)
    assert low > 0.5 > 0.3 > high, (low, high)
