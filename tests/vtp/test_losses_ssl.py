"""DINO / iBOT / KoLeo against hand-computed references; teacher centering, Sinkhorn-Knopp, schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vtp_kedro.vtp.data.transforms import mask_weights
from vtp_kedro.vtp.losses.ssl import (
    SoftmaxCentering,
    SSLLoss,
    SSLLossConfig,
    dino_loss,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
    teacher_entropy,
    teacher_mean_entropy,
    teacher_temperature,
)


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0, 100) == pytest.approx(0.04)
    assert teacher_temperature(50, 100) == pytest.approx(0.055)
    assert teacher_temperature(100, 100) == pytest.approx(0.07)
    assert teacher_temperature(10_000, 100) == pytest.approx(0.07)
    assert teacher_temperature(0, 0) == pytest.approx(0.07)
    with pytest.raises(ValueError, match="step"):
        teacher_temperature(-1, 100)


def test_softmax_centering_uses_then_updates_the_center_by_ema():
    centering = SoftmaxCentering(out_dim=5, momentum=0.9)
    first, second = randn(0, 6, 5), randn(1, 4, 5) + 2
    probs = centering(first, temperature=0.04)
    torch.testing.assert_close(probs, torch.softmax(first / 0.04, dim=-1))  # center starts at zero
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    center_1 = 0.1 * first.mean(0, keepdim=True)
    torch.testing.assert_close(centering.center, center_1)
    probs = centering(second, temperature=0.07)
    torch.testing.assert_close(probs, torch.softmax((second - center_1) / 0.07, dim=-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    torch.testing.assert_close(centering.center, 0.9 * center_1 + 0.1 * second.mean(0, keepdim=True))
    assert "center" in centering.state_dict()  # checkpointed


def test_softmax_centering_ignores_an_empty_batch():
    centering = SoftmaxCentering(out_dim=3)
    assert centering(torch.empty(0, 3), 0.04).shape == (0, 3)
    assert not centering.center.isnan().any() and (centering.center == 0).all()


def reference_sinkhorn(logits: torch.Tensor, temperature: float, iterations: int) -> torch.Tensor:
    """DINOv2's sinkhorn_knopp_teacher on one process, written out."""
    q = torch.exp(logits / temperature).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_sinkhorn_knopp_rows_sum_to_one_and_prototypes_are_balanced():
    logits = randn(0, 32, 8)
    probs = sinkhorn_knopp(logits, temperature=0.07)
    torch.testing.assert_close(probs, reference_sinkhorn(logits, 0.07, 3))
    torch.testing.assert_close(probs.sum(-1), torch.ones(32))
    balanced = sinkhorn_knopp(logits, temperature=0.2, n_iterations=100)
    torch.testing.assert_close(balanced.sum(0), torch.full((8,), 32 / 8), rtol=1e-2, atol=0)
    # Far more balanced than the plain softmax, which piles mass on a few prototypes.
    assert balanced.sum(0).std() < 0.01 * torch.softmax(logits / 0.2, -1).sum(0).std()


def test_sinkhorn_knopp_is_shift_invariant_and_finite_where_exp_would_overflow():
    logits = randn(0, 16, 4)
    probs = sinkhorn_knopp(logits + 100, temperature=0.04)  # exp(100 / 0.04) is inf in float32
    torch.testing.assert_close(probs, sinkhorn_knopp(logits, temperature=0.04))
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))


def test_dino_loss_matches_explicit_loops():
    batch, prototypes, temperature = 3, 5, 0.1
    student = [randn(i, batch, prototypes) for i in range(4)]  # 2 global + 2 local crops
    teacher = [torch.softmax(randn(10 + g, batch, prototypes) / 0.04, -1) for g in range(2)]
    total, pairs = 0.0, 0
    for g in range(2):
        for v in range(4):
            if v == g:
                continue
            for b in range(batch):
                log_p = torch.log_softmax(student[v][b] / temperature, dim=0)
                total += -(teacher[g][b] * log_p).sum().item() / batch
            pairs += 1
    assert pairs == 6
    assert dino_loss(student, teacher, temperature).item() == pytest.approx(total / pairs, rel=1e-5)


def test_dino_loss_needs_a_pair():
    with pytest.raises(ValueError, match="two global crops"):
        dino_loss([randn(0, 2, 3)], [torch.softmax(randn(1, 2, 3), -1)])


def test_ibot_loss_matches_explicit_loops():
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    n_masked, prototypes = int(masks.sum()), 6
    student, teacher = randn(0, n_masked, prototypes), torch.softmax(randn(1, n_masked, prototypes) / 0.05, -1)
    expected, token = 0.0, 0
    for image_mask in masks:
        for masked in image_mask:
            if masked:
                ce = -(teacher[token] * torch.log_softmax(student[token] / 0.1, dim=0)).sum().item()
                expected += ce / int(image_mask.sum())
                token += 1
    expected /= len(masks)  # every image counts, the unmasked one too
    weights = mask_weights(masks)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))
    assert ibot_loss(student, teacher, weights, len(masks), 0.1).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_on_a_square():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # Every nearest neighbour is at distance sqrt(2); the scale of the features does not matter.
    assert koleo_loss(5 * square).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    clustered = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0], [-0.99, -0.14]])
    assert koleo_loss(clustered) > koleo_loss(square)  # the regulariser rewards spreading out
    features = clustered.clone().requires_grad_()
    koleo_loss(features).backward()
    assert features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n >= 2"):
        koleo_loss(torch.ones(1, 3))


def test_teacher_entropy():
    assert teacher_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert teacher_entropy(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_entropy(torch.empty(0, 4)).item() == 0.0


def test_teacher_mean_entropy_tells_collapse_to_one_prototype_from_confident_spread_targets():
    confident_spread = torch.eye(4)  # every row one-hot, each on its own prototype: healthy
    collapsed = torch.eye(4)[[0, 0, 0, 0]]  # every row on prototype 0
    assert teacher_entropy(confident_spread).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_mean_entropy(confident_spread).item() == pytest.approx(math.log(4))
    assert teacher_mean_entropy(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_mean_entropy(torch.empty(0, 4)).item() == 0.0


def ssl_inputs(batch: int = 3, prototypes: int = 7, tokens: int = 4, dim: int = 5):
    masks = torch.zeros(2 * batch, tokens, dtype=torch.bool)
    masks[0, :2] = masks[3, 1:] = masks[4, 0] = True
    n_masked = int(masks.sum())
    return dict(
        student_cls_logits=[randn(i, batch, prototypes).requires_grad_() for i in range(4)],
        teacher_cls_logits=[randn(10 + g, batch, prototypes) for g in range(2)],
        student_patch_logits=randn(20, n_masked, prototypes).requires_grad_(),
        teacher_patch_logits=randn(21, n_masked, prototypes),
        masks=masks,
        student_global_cls_features=[randn(30 + g, batch, dim).requires_grad_() for g in range(2)],
    )


def test_ssl_loss_composes_the_terms_with_centering():
    config = SSLLossConfig(out_dim=7, teacher_temperature_warmup_steps=10, koleo_weight=0.1)
    loss_fn, inputs = SSLLoss(config), ssl_inputs()
    loss, metrics = loss_fn(**inputs, step=5)
    temperature = 0.055
    teacher_cls = torch.softmax(torch.cat(inputs["teacher_cls_logits"]) / temperature, -1).chunk(2)
    teacher_patch = torch.softmax(inputs["teacher_patch_logits"] / temperature, -1)
    dino = dino_loss(inputs["student_cls_logits"], teacher_cls)
    ibot = ibot_loss(inputs["student_patch_logits"], teacher_patch, mask_weights(inputs["masks"]), 6)
    koleo = sum(koleo_loss(f) for f in inputs["student_global_cls_features"])
    torch.testing.assert_close(loss, dino + ibot + 0.1 * koleo)
    torch.testing.assert_close(metrics["dino"], dino.detach())
    assert metrics["teacher_temperature"].item() == pytest.approx(temperature)
    torch.testing.assert_close(loss_fn.cls_centering.center,
                               0.1 * torch.cat(inputs["teacher_cls_logits"]).mean(0, keepdim=True))
    torch.testing.assert_close(loss_fn.patch_centering.center,
                               0.1 * inputs["teacher_patch_logits"].mean(0, keepdim=True))
    loss.backward()
    assert all(t.grad.abs().sum() > 0 for t in inputs["student_cls_logits"])
    assert inputs["student_patch_logits"].grad.abs().sum() > 0


def test_ssl_loss_with_sinkhorn_knopp():
    config = SSLLossConfig(out_dim=7, teacher_temperature_warmup_steps=0, centering="sinkhorn_knopp")
    loss_fn, inputs = SSLLoss(config), ssl_inputs()
    assert loss_fn.cls_centering is None and not list(loss_fn.buffers())
    loss, metrics = loss_fn(**inputs, step=0)
    assert loss.isfinite() and 0 < metrics["teacher_cls_entropy"] < math.log(7)


def test_ssl_config_validates():
    with pytest.raises(ValueError, match="teacher_temperature_start"):
        SSLLossConfig(out_dim=7, teacher_temperature_warmup_steps=0, teacher_temperature_start=0.1)
    with pytest.raises(ValueError, match="centering"):
        SSLLossConfig(out_dim=7, teacher_temperature_warmup_steps=0, centering="none")


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    logits = randn(0, 10, 6)
    rows = slice(0, 3) if rank == 0 else slice(3, 10)  # unequal shares, as masked patches are
    centering = SoftmaxCentering(out_dim=6)
    centering(logits[rows], 0.04)
    probs = sinkhorn_knopp(logits[rows], 0.07)
    torch.save({"center": centering.center, "sinkhorn": probs}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_reduce_the_global_batch(tmp_path):
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    logits = randn(0, 10, 6)
    for result in results:
        torch.testing.assert_close(result["center"], 0.1 * logits.mean(0, keepdim=True))
    sinkhorn = torch.cat([results[0]["sinkhorn"], results[1]["sinkhorn"]])
    torch.testing.assert_close(sinkhorn, sinkhorn_knopp(logits, 0.07))
