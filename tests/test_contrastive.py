"""The closed-form contrastive losses against their definitions, in float64."""

import torch
import torch.nn.functional as F

from trainer.losses import (contrastive_infonce, contrastive_infonce_direct, contrastive_paper,
                            contrastive_paper_direct)


def _problem(seed: int = 0, classes: int = 5, pixels: int = 60, capacity: int = 7, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(pixels, dim, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(classes, (pixels,), generator=g)
    labels[:3] = 4  # class 4 has a few pixels ...
    w = (torch.rand(pixels, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    bank = F.normalize(torch.randn(classes, capacity, dim, generator=g, dtype=torch.float64), dim=2)
    valid = torch.ones(classes, capacity, dtype=torch.bool)
    valid[1, 3:] = False          # a partly filled class
    valid[2, 1:] = False          # a class with one memory vector: skipped
    valid[3] = False              # an empty class
    v = (torch.rand(classes, capacity, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    return z, labels, w, bank, valid, v


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def test_paper_loss_closed_form_equals_direct_formula_with_gradients():
    z, labels, w, bank, valid, v = _problem()
    closed = contrastive_paper(z, labels, w, bank, valid, v)
    direct = contrastive_paper_direct(z, labels, w, bank, valid, v)
    assert closed.item() > 0
    torch.testing.assert_close(closed, direct, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(closed, z, w, v), _grads(direct, z, w, v)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_paper_loss_is_zero_when_pixels_equal_their_class_memory():
    labels = torch.arange(20) % 2
    w = torch.rand(20, dtype=torch.float64) + 0.5
    bank = F.normalize(torch.stack([torch.ones(4, 8), -torch.ones(4, 8)]).double(), dim=2)
    z = torch.where((labels == 0)[:, None], 2.0, -3.0).double().expand(-1, 8)
    valid = torch.ones(2, 4, dtype=torch.bool)
    loss = contrastive_paper(z, labels, w, bank, valid, torch.ones(2, 4, dtype=torch.float64))
    assert abs(loss.item()) < 1e-12


def test_infonce_equals_direct_formula_with_gradients():
    z, labels, w, bank, valid, v = _problem(seed=1)
    for temperature in (0.07, 0.5):
        closed = contrastive_infonce(z, labels, w, bank, valid, v, temperature, chunk=16)
        direct = contrastive_infonce_direct(z, labels, w, bank, valid, v, temperature)
        torch.testing.assert_close(closed, direct, rtol=1e-10, atol=1e-12)
        for a, b in zip(_grads(closed, z, w, v), _grads(direct, z, w, v)):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_infonce_prefers_pixels_near_their_own_class():
    _, labels, w, bank, valid, v = _problem(seed=2)
    valid = torch.ones_like(valid)
    near_own = bank[labels, 0] + 0.01  # the bank holds unit vectors
    near_other = bank[(labels + 1) % 5, 0] + 0.01
    own = contrastive_infonce(near_own, labels, w.detach(), bank, valid, v.detach(), 0.1)
    other = contrastive_infonce(near_other, labels, w.detach(), bank, valid, v.detach(), 0.1)
    assert own < other
