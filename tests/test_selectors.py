"""Batched class selectors equal C separate MLPs (the official code's layout)."""

import copy

import torch
from torch import nn

from trainer.models import selectors as selectors_module
from trainer.models.selectors import ClassSelectors, rescale_to_mean_one


def test_pixel_scores_and_gradients_match_separate_mlps():
    torch.manual_seed(0)
    selectors = ClassSelectors(num_classes=4, dim=8)
    mlps = selectors.as_separate_mlps()
    x = torch.randn(37, 8, requires_grad=True)
    classes = torch.randint(0, 3, (37,))  # class 3 absent
    scores = selectors.score_pixels(x, classes)
    expected = torch.zeros(37)
    for c in range(3):
        expected[classes == c] = mlps[c](x[classes == c])[:, 0]
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    for c in range(3):  # running statistics like BatchNorm1d's
        torch.testing.assert_close(selectors.running_mean[c], mlps[c][1].running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(selectors.running_var[c], mlps[c][1].running_var, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(selectors.running_mean[3], torch.zeros(8))
    (grad_batched,) = torch.autograd.grad(scores.square().sum(), x)
    (grad_separate,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad_batched, grad_separate, rtol=1e-4, atol=1e-5)
    weight_grad = torch.autograd.grad(selectors.score_pixels(x, classes).sum(), selectors.weight1)[0]
    assert weight_grad[3].abs().sum() == 0 and weight_grad[:3].abs().sum() > 0


def test_bank_scores_use_only_filled_slots_for_statistics():
    torch.manual_seed(1)
    selectors = ClassSelectors(num_classes=2, dim=4)
    mlps = selectors.as_separate_mlps()
    bank = torch.randn(2, 5, 4)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scores = selectors.score_bank(bank, valid)
    torch.testing.assert_close(scores[0], mlps[0](bank[0])[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[1, :3], mlps[1](bank[1, :3])[:, 0], rtol=1e-5, atol=1e-5)


def test_rescale_to_mean_one_per_class():
    weights = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    classes = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(rescale_to_mean_one(weights, classes, 3), torch.tensor([0.5, 1.5, 1.0, 1.0, 1.0]))


def _parameter_grads(module: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in module.parameters()]
    return [g if g is not None else torch.zeros_like(p)
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def _separate_grads(mlps: list[nn.Sequential], selectors: ClassSelectors) -> dict[str, torch.Tensor]:
    """The separate MLPs' parameter gradients in the batched layout of ClassSelectors."""
    def grad(p: torch.Tensor) -> torch.Tensor:
        return p.grad if p.grad is not None else torch.zeros_like(p)
    return {"weight1": torch.stack([grad(m[0].weight).t() for m in mlps]),
            "bias1": torch.stack([grad(m[0].bias) for m in mlps]),
            "bn_weight": torch.stack([grad(m[1].weight) for m in mlps]),
            "bn_bias": torch.stack([grad(m[1].bias) for m in mlps]),
            "weight2": torch.stack([grad(m[3].weight)[0] for m in mlps]),
            "bias2": torch.cat([grad(m[3].bias) for m in mlps])}


def _check_against_separate(dtype: torch.dtype, training: bool, tol: float) -> None:
    """Scores and every gradient (input, all parameters) of both layouts, pixels and bank,
    against C separate nn.Sequential MLPs, with a loss that weights rows unevenly."""
    torch.manual_seed(2)
    classes_n, dim = 4, 8
    selectors = ClassSelectors(num_classes=classes_n, dim=dim)
    with torch.no_grad():  # a non-trivial BN state, so that eval mode is tested too
        selectors.bn_weight.uniform_(-1.5, 1.5)
        selectors.bn_bias.uniform_(-0.5, 0.5)
        selectors.running_mean.uniform_(-0.3, 0.3)
        selectors.running_var.uniform_(0.5, 2.0)
    mlps = selectors.as_separate_mlps()
    for c, m in enumerate(mlps):
        m[1].running_mean.copy_(selectors.running_mean[c])
        m[1].running_var.copy_(selectors.running_var[c])
        m.to(dtype).train(training)
    selectors.to(dtype).train(training)

    # pixels: class 3 absent, rows in random class order
    x = torch.randn(41, dim, dtype=dtype, requires_grad=True)
    classes = torch.randint(0, 3, (41,))
    row_weights = torch.randn(41, dtype=dtype)
    scores = selectors.score_pixels(x, classes)
    ours = _parameter_grads(selectors, (scores * row_weights).sum() + scores.square().sum())
    (grad_x,) = torch.autograd.grad((selectors.score_pixels(x, classes) * row_weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    expected = torch.zeros(41, dtype=dtype)
    for c in range(3):
        expected = expected.index_put((torch.nonzero(classes == c)[:, 0],), mlps[c](x_ref[classes == c])[:, 0])
    ((expected * row_weights).sum() + expected.square().sum()).backward()
    torch.testing.assert_close(scores, expected, rtol=tol, atol=tol)
    reference = _separate_grads(mlps, selectors)
    for (name, _), got in zip(selectors.named_parameters(), ours):
        torch.testing.assert_close(got, reference[name], rtol=tol, atol=tol, msg=f"pixels, {name}")
    x_ref2 = x.detach().clone().requires_grad_()
    expected2 = torch.cat([mlps[c](x_ref2[classes == c])[:, 0] for c in range(3)])
    order = torch.cat([torch.nonzero(classes == c)[:, 0] for c in range(3)])
    (grad_x_ref,) = torch.autograd.grad((expected2 * row_weights[order]).sum(), x_ref2)
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=tol, atol=tol)

    # bank: class 1 partly filled, class 2 with one slot, class 3 empty; every slot gets a gradient
    for m in mlps:
        m.zero_grad(set_to_none=True)
    bank = torch.randn(classes_n, 6, dim, dtype=dtype, requires_grad=True)
    valid = torch.ones(classes_n, 6, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 1:] = False
    valid[3] = False
    slot_weights = torch.randn(classes_n, 6, dtype=dtype)
    scores = selectors.score_bank(bank, valid)
    ours = _parameter_grads(selectors, (scores * slot_weights * valid).sum())
    (grad_bank,) = torch.autograd.grad((selectors.score_bank(bank, valid) * slot_weights * valid).sum(), bank)
    bank_ref = bank.detach().clone().requires_grad_()
    usable = [0, 1] if training else [0, 1, 2]  # BatchNorm1d refuses one row in training
    loss = 0
    for c in usable:
        got = mlps[c](bank_ref[c, valid[c]])[:, 0]
        torch.testing.assert_close(scores[c, valid[c]], got, rtol=tol, atol=tol)
        loss = loss + (got * slot_weights[c, valid[c]]).sum()
    loss.backward()
    reference = _separate_grads(mlps, selectors)
    grad_bank_ref = bank_ref.grad
    for (name, _), got in zip(selectors.named_parameters(), ours):
        torch.testing.assert_close(got[usable], reference[name][usable], rtol=tol, atol=tol, msg=f"bank, {name}")
    torch.testing.assert_close(grad_bank[usable] * valid[usable, :, None],
                               grad_bank_ref[usable] * valid[usable, :, None], rtol=tol, atol=tol)


def test_training_scores_and_all_gradients_match_separate_mlps():
    _check_against_separate(torch.float64, training=True, tol=1e-10)


def test_eval_scores_and_all_gradients_match_separate_mlps():
    _check_against_separate(torch.float64, training=False, tol=1e-10)


def test_float32_matches_separate_mlps():
    _check_against_separate(torch.float32, training=True, tol=2e-4)
    _check_against_separate(torch.float32, training=False, tol=2e-4)


def test_classes_spread_over_several_padded_blocks(monkeypatch):
    # Blocks of 4 rows: every class takes several blocks, most with padding rows.
    monkeypatch.setattr(selectors_module, "BLOCK", 4)
    _check_against_separate(torch.float64, training=True, tol=1e-10)
    _check_against_separate(torch.float64, training=False, tol=1e-10)


def test_bank_slots_outside_the_statistics_pass_gradient_through_them():
    # An unfilled slot is normalised with its class's statistics, so a gradient on its score
    # reaches the filled slots through the mean and variance: compare with autograd over a
    # direct formula.
    torch.manual_seed(3)
    selectors = ClassSelectors(num_classes=2, dim=4).double()
    bank = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    w = torch.randn(2, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad((selectors.score_bank(bank, valid) * w).sum(), bank)

    def direct(bank: torch.Tensor) -> torch.Tensor:
        h = torch.bmm(bank, selectors.weight1) + selectors.bias1[:, None]
        m = valid[:, :, None].double()
        mean = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        var = ((h - mean) ** 2 * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        y = (h - mean) / torch.sqrt(var + selectors.eps) * selectors.bn_weight[:, None] + selectors.bn_bias[:, None]
        a = torch.nn.functional.leaky_relu(y, 0.2)
        return (a * selectors.weight2[:, None]).sum(2) + selectors.bias2[:, None]

    (expected,) = torch.autograd.grad((direct(bank) * w).sum(), bank)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_scoring_a_subset_by_rows_equals_scoring_it_copied_out(monkeypatch):
    monkeypatch.setattr(selectors_module, "BLOCK", 4)  # several blocks per class, with padding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=g, dtype=torch.float64)
    classes = torch.randint(0, 3, (30,), generator=g)
    rows = torch.tensor([29, 3, 7, 8, 15, 0, 22, 21, 11])
    for training in (True, False):
        selectors = ClassSelectors(3, 8).double().train(training)
        torch.manual_seed(1)
        expected = selectors.score_pixels(x[rows], classes[rows])
        assert torch.allclose(selectors.score_pixels(x, classes[rows], rows), expected, atol=1e-12)
        assert torch.allclose(selectors.score_pixels(x, classes, slice(None)), selectors.score_pixels(x, classes),
                              atol=1e-12)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).detach().norm() / expected.detach().norm())


def test_bf16_products_round_the_first_layer_only_by_bf16s_precision():
    # product_dtype=bfloat16: the first layer's products take bf16 inputs, so scores and gradients
    # move from float32's by about bf16's rounding (2^-8), no more, and everything stays float32.
    torch.manual_seed(4)
    exact = ClassSelectors(num_classes=3, dim=32)
    fast = copy.deepcopy(exact)
    fast.product_dtype = torch.bfloat16
    x = torch.randn(300, 32)
    classes = torch.randint(0, 3, (300,))
    bank = torch.randn(3, 20, 32)
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[2, 12:] = False
    row_weights, slot_weights = torch.randn(300), torch.randn(3, 20) * valid
    for training in (True, False):
        scores = {}
        for name, selectors in (("exact", exact), ("fast", fast)):
            selectors.train(training).zero_grad(set_to_none=True)
            pixels, slots = selectors.score_pixels(x, classes), selectors.score_bank(bank, valid)
            ((pixels * row_weights).sum() + (slots * slot_weights).sum()).backward()
            scores[name] = (pixels, slots)
        for got, expected in zip(scores["fast"], scores["exact"]):
            assert got.dtype == torch.float32
            assert 1e-4 < _relative_error(got, expected) < 2e-2
        if training:
            for (name, p_fast), p_exact in zip(fast.named_parameters(), exact.parameters()):
                if p_exact.grad is None:  # bias1: batch norm cancels it
                    assert p_fast.grad is None
                    continue
                assert p_fast.grad.dtype == torch.float32
                assert _relative_error(p_fast.grad, p_exact.grad) < 5e-2, name
            # the first layer's weight gradient is itself a bf16 product (bias2's never sees one)
            assert _relative_error(fast.weight1.grad, exact.weight1.grad) > 1e-4


def test_blocks_summed_per_class_the_same_on_every_device_path():
    # The CPU's index_add_ and the one-hot product that a GPU runs (it repeats itself run to run).
    g = torch.Generator().manual_seed(5)
    blocks = torch.randn(7, 3, 4, dtype=torch.float64, generator=g)
    block_class = torch.tensor([0, 0, 1, 3, 3, 3, 4])  # classes 2 and 5 have no block
    expected = torch.stack([blocks[block_class == c].sum(0) for c in range(6)])
    torch.testing.assert_close(selectors_module.sum_blocks_by_class(blocks, block_class, 6), expected)
    torch.testing.assert_close(selectors_module._sum_by_one_hot_product(blocks, block_class, 6), expected)
