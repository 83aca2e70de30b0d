"""EMA teacher: cosine momentum schedule, update formula, frozen copy that gets no gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vtp_kedro.vtp.models.ema import cosine_momentum, ema_update, make_teacher
from vtp_kedro.vtp.models.heads import DINOHead
from vtp_kedro.vtp.models.vit import VisionTransformer, vit_config


def test_cosine_momentum_end_points_and_shape():
    assert cosine_momentum(0, 100) == pytest.approx(0.992)
    assert cosine_momentum(50, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(250, 100) == pytest.approx(1.0)
    assert cosine_momentum(0, 10, base=0.9, final=0.99) == pytest.approx(0.9)
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0, 0)
    with pytest.raises(ValueError, match="step"):
        cosine_momentum(-1, 10)


def tiny_module(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_ema_update_formula_and_buffers():
    student, teacher = tiny_module(0), tiny_module(1)
    student.train()(torch.randn(8, 4))  # moves the student's BatchNorm running statistics
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, momentum=0.9)
    for name, param in student.named_parameters():
        torch.testing.assert_close(dict(teacher.named_parameters())[name], 0.9 * before[name] + 0.1 * param)
    for name, buffer in student.named_buffers():
        torch.testing.assert_close(dict(teacher.named_buffers())[name], buffer)

    ema_update(teacher, student, momentum=0.0)
    for (_, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters()):
        torch.testing.assert_close(t, s)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, momentum=1.5)


def test_ema_update_rejects_different_architectures():
    with pytest.raises(ValueError, match="missing in teacher"):
        ema_update(nn.Linear(4, 3), tiny_module(0), momentum=0.9)


def encoder_and_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"encoder": VisionTransformer(vit_config("tiny", depth=1)), "head": DINOHead(192, 64, 64, 16)})


def test_teacher_is_a_frozen_independent_copy():
    student = encoder_and_head().train()
    teacher = make_teacher(student)
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student["head"].mlp[0].weight.add_(1.0)
    assert not torch.equal(student["head"].mlp[0].weight, teacher["head"].mlp[0].weight)


def test_teacher_gets_no_gradient_through_the_student_loss_and_follows_by_ema():
    student = encoder_and_head().train()
    teacher = make_teacher(student)
    view_1, view_2 = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def cls_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model["head"](model["encoder"](images)[:, 0])

    # DINO-style: teacher targets on one view, student predictions on another.
    targets = (cls_logits(teacher, view_1) / 0.04).softmax(-1)
    loss = -(targets * (cls_logits(student, view_2) / 0.1).log_softmax(-1)).sum(-1).mean()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)

    torch.optim.SGD(student.parameters(), lr=0.1).step()
    old = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, momentum=0.992)
    students = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        torch.testing.assert_close(param, 0.992 * old[name] + 0.008 * students[name])
    teacher_step = sum((p - old[n]).abs().sum() for n, p in teacher.named_parameters())
    student_step = sum((students[n] - old[n]).abs().sum() for n in old)
    assert student_step > 0
    assert teacher_step.item() == pytest.approx(0.008 * student_step.item(), rel=1e-3)
