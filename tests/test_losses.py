import math

import pytest
import torch

from raydistill.training.losses import LayerProjection, distill_loss, kd_kl, lwd_mse


def _softmax(xs, t):
    e = [math.exp(x / t) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def test_kd_kl_matches_hand_computation():
    s, t, T = [1.0, -0.5, 0.2], [0.3, 0.9, -1.2], 2.0
    ps, pt = _softmax(s, T), _softmax(t, T)
    expected = T * T * sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    got = kd_kl(torch.tensor([s]), torch.tensor([t]), T).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_kd_kl_zero_when_equal_and_batch_mean():
    x = torch.randn(4, 3)
    assert kd_kl(x, x, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    both = kd_kl(a, b, 1.0).item()
    each = (kd_kl(a[:1], b[:1], 1.0).item() + kd_kl(a[1:], b[1:], 1.0).item()) / 2
    assert both == pytest.approx(each, rel=1e-5)


def test_distill_loss_composition():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    teacher = torch.tensor([[1.0, 0.5], [0.2, 0.1]])
    hs, ht = torch.ones(2, 2, 4), torch.zeros(2, 2, 4)
    total, parts = distill_loss(
        logits,
        labels,
        teacher,
        alpha=0.5,
        temperature=2.0,
        beta=2.0,
        projected_student_hidden=hs,
        teacher_hidden=ht,
    )
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    kd = kd_kl(logits, teacher, 2.0).item()
    assert parts["lwd"] == pytest.approx(1.0)
    assert total.item() == pytest.approx(ce + 0.5 * kd + 2.0 * 1.0, rel=1e-5)
    total0, parts0 = distill_loss(logits, labels, teacher, alpha=0.0)
    assert total0.item() == pytest.approx(ce) and "kd" not in parts0


def test_lwd_projection_shapes_and_identity():
    proj = LayerProjection(64, 96, num_layers=3)
    out = proj(torch.randn(5, 3, 64))
    assert out.shape == (5, 3, 96)
    assert len(list(proj.parameters())) == 6
    same = LayerProjection(64, 64, num_layers=2)
    x = torch.randn(2, 2, 64)
    assert torch.equal(same(x), x) and not list(same.parameters())
    assert lwd_mse(out, torch.zeros_like(out)).item() >= 0


def test_lwd_gradient_reaches_projection():
    proj = LayerProjection(8, 16, 2)
    loss = lwd_mse(proj(torch.randn(3, 2, 8)), torch.randn(3, 2, 16))
    loss.backward()
    assert all(p.grad is not None for p in proj.parameters())
