"""Batched class selectors equal C separate MLPs (the official code's layout)."""

import torch
from torch import nn

from trainer.models.selectors import ClassSelectors, grouped_linear, rescale_to_mean_one


def _as_separate_mlps(selectors: ClassSelectors) -> list[nn.Sequential]:
    mlps = []
    for c in range(selectors.num_classes):
        mlp = nn.Sequential(nn.Linear(selectors.dim, selectors.dim), nn.BatchNorm1d(selectors.dim),
                            nn.LeakyReLU(0.2), nn.Linear(selectors.dim, 1))
        with torch.no_grad():
            mlp[0].weight.copy_(selectors.weight1[c].t())
            mlp[0].bias.copy_(selectors.bias1[c])
            mlp[1].weight.copy_(selectors.bn_weight[c])
            mlp[1].bias.copy_(selectors.bn_bias[c])
            mlp[3].weight.copy_(selectors.weight2[c][None])
            mlp[3].bias.copy_(selectors.bias2[c:c + 1])
        mlps.append(mlp)
    return mlps


def test_pixel_scores_and_gradients_match_separate_mlps():
    torch.manual_seed(0)
    selectors = ClassSelectors(num_classes=4, dim=8)
    mlps = _as_separate_mlps(selectors)
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
    mlps = _as_separate_mlps(selectors)
    bank = torch.randn(2, 5, 4)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scores = selectors.score_bank(bank, valid)
    torch.testing.assert_close(scores[0], mlps[0](bank[0])[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[1, :3], mlps[1](bank[1, :3])[:, 0], rtol=1e-5, atol=1e-5)


def test_grouped_linear_float64_reference_path_agrees():
    x = torch.randn(10, 4, dtype=torch.float64)
    w = torch.randn(3, 4, 5, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2, 2, 2])
    expected = torch.cat([x[:3] @ w[0], x[3:] @ w[2]])
    torch.testing.assert_close(grouped_linear(x, w, groups), expected)
    torch.testing.assert_close(grouped_linear(x.float(), w.float(), groups), expected.float(), rtol=1e-5, atol=1e-5)


def test_rescale_to_mean_one_per_class():
    weights = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    classes = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(rescale_to_mean_one(weights, classes, 3), torch.tensor([0.5, 1.5, 1.0, 1.0, 1.0]))
