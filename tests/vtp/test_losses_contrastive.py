"""L_clip: symmetric InfoNCE through open_clip's ClipLoss, on one process and across two."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vtp_kedro.vtp.losses.contrastive import ContrastiveLoss


def features(seed: int, batch: int, dim: int) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


def reference_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def test_equal_logits_give_log_batch_size():
    batch = 8
    loss, _ = ContrastiveLoss()(torch.ones(batch, 4), torch.ones(batch, 4), torch.tensor(1.0))
    torch.testing.assert_close(loss, torch.tensor(math.log(batch)))


def test_random_embeddings_at_scale_one_give_about_log_batch_size():
    batch = 64
    loss, _ = ContrastiveLoss()(features(0, batch, 512), features(1, batch, 512), torch.tensor(1.0))
    assert abs(loss.item() - math.log(batch)) < 0.02


def test_matched_embeddings_at_large_scale_give_about_zero():
    image = torch.eye(16, 32)
    loss, _ = ContrastiveLoss()(3 * image, image, torch.tensor(100.0))
    assert loss.item() < 1e-6


def test_matches_symmetric_cross_entropy_and_has_gradients():
    image, text = features(0, 12, 16).requires_grad_(), features(1, 12, 16).requires_grad_()
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss, metrics = ContrastiveLoss(rank=0, world_size=1)(image, text, log_scale.exp())
    torch.testing.assert_close(loss, reference_clip_loss(image, text, 10.0))
    torch.testing.assert_close(metrics["logit_scale"], torch.tensor(10.0))
    loss.backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0 and log_scale.grad != 0


def test_logit_scale_is_clamped():
    image, text = features(0, 8, 16), features(1, 8, 16)
    loss_fn = ContrastiveLoss(max_logit_scale=100.0)
    clamped, metrics = loss_fn(image, text, torch.tensor(1000.0))
    torch.testing.assert_close(clamped, reference_clip_loss(image, text, 100.0))
    assert metrics["logit_scale"].item() == 100.0


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="rank 2"):
        ContrastiveLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="one \\(B, D\\) shape"):
        ContrastiveLoss()(torch.ones(4, 8), torch.ones(3, 8), torch.tensor(1.0))


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    image, text = features(0, 8, 16), features(1, 8, 16)
    rows = slice(4 * rank, 4 * rank + 4)
    local_image = image[rows].clone().requires_grad_()
    loss, _ = ContrastiveLoss()(local_image, text[rows], torch.tensor(10.0))  # rank/world_size from the group
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local_image.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_reproduce_the_global_batch_loss(tmp_path):
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    image = features(0, 8, 16).requires_grad_()
    expected = reference_clip_loss(image, features(1, 8, 16), 10.0)
    expected.backward()
    # DDP averages over ranks: the mean of the local losses is the global one.
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, expected.detach())
    # The all-gather's backward sums the gradients of every rank's loss into each rank's own rows;
    # DDP then averages over the two ranks, which halves them.
    torch.testing.assert_close(torch.cat([results[0]["grad"], results[1]["grad"]]) / 2, image.grad)
