"""Per-class selectors, batched across classes.

The paper gives every class c two small MLPs (one for the pixels' features, one for the
memory bank): Linear(d,d), BN, LeakyReLU(0.2), Linear(d,1). The official code builds
2C separate modules and loops over classes. Here each MLP layer holds the weights of
all classes in one tensor:

- pixels are sorted by class and the first layer is one grouped matrix product
  (``torch.nn.functional.grouped_mm``) over the class segments;
- the bank is already a [C, N, d] tensor, so its first layer is one ``bmm``;
- batch normalisation uses each class's own statistics (as C separate BatchNorm1d
  would).

In training mode the whole MLP is one autograd function (``_SelectorMLP``) with its
backward written out: the two first-layer products and about ten passes over the
[rows, d] activations, where autograd over the same ops keeps and revisits about twice as
many (see README, "The contrastive term at PASCAL VOC scale"). In eval mode the batch norm
is an affine map, folded into the first layer. No Python loop over classes remains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SLOPE = 0.2  # LeakyReLU's negative slope in the selectors


def _grouped_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    ok = x.dtype in _GROUPED_DTYPES and (x.device.type == "cpu" or x.dtype == torch.bfloat16)
    return ok and x.shape[1] % 4 == 0 and weight.shape[2] % 4 == 0


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x [P,d] (in groups of ``counts`` rows) times their group's matrix [C,d,k] -> [P,k]."""
    if _grouped_ok(x, weight):
        # The kernel wants 16-byte-aligned strides: pad the rows to a multiple of 4 with zeros.
        pad = (-len(x)) % 4
        xp = F.pad(x, (0, 0, 0, pad)) if pad else x
        ends = counts.cumsum(0)
        ends[-1] += pad
        return F.grouped_mm(xp.contiguous(), weight.contiguous(), offs=ends.to(torch.int32))[:len(x)]
    # Reference path for other dtypes (float64 in the tests): one product per group.
    pieces = torch.split(x, counts.tolist())
    return torch.cat([piece @ weight[c] for c, piece in enumerate(pieces)])


def _grouped_outer(x: torch.Tensor, grad: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per group, x_g^T grad_g: [P,d] and [P,k] in groups -> [C,d,k] (a grouped weight gradient)."""
    if _grouped_ok(x, grad[None]):
        pad = (-len(x)) % 4
        xt = F.pad(x, (0, 0, 0, pad)).t().contiguous()
        gp = F.pad(grad, (0, 0, 0, pad)).contiguous()
        ends = counts.cumsum(0)
        ends[-1] += pad
        return F.grouped_mm(xt, gp, offs=ends.to(torch.int32))
    pieces = zip(torch.split(x, counts.tolist()), torch.split(grad, counts.tolist()))
    return torch.stack([a.t() @ b for a, b in pieces])


class _GroupedLinear(torch.autograd.Function):
    """y[i] = x[i] @ W[g(i)] for rows sorted into groups of ``counts`` rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, counts)
        return _grouped_mm(x, weight, counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, counts = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # the selectors see detached pixels: usually not needed
            grad_x = _grouped_mm(grad.contiguous(), weight.transpose(1, 2), counts)
        if ctx.needs_input_grad[1]:
            grad_w = _grouped_outer(x, grad.contiguous(), counts)
        return grad_x, grad_w, None


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (sorted by ``groups``) times their group's matrix: [P,d] x [C,d,k] -> [P,k]."""
    return _GroupedLinear.apply(x, weight, torch.bincount(groups, minlength=weight.shape[0]))


# --- the two layouts the selectors see -----------------------------------------------------------

class _Pixels:
    """Rows [P,d] sorted by class. Per-class sums and broadcasts are products with the one-hot
    matrix [P,C]: one pass each, and no serial scatter-add (param[classes]'s backward)."""

    def __init__(self, classes_sorted: torch.Tensor, num_classes: int, dtype: torch.dtype) -> None:
        self.classes = classes_sorted
        self.onehot = F.one_hot(classes_sorted, num_classes).to(dtype)  # [P, C]
        self.counts = torch.bincount(classes_sorted, minlength=num_classes)
        self.in_stats = self.counts.to(dtype)  # rows in each class's statistics: all

    def linear(self, x, weight):  # differentiable: the eval path may need gradients
        return _GroupedLinear.apply(x, weight, self.counts)

    def linear_input_grad(self, grad, weight):
        return _grouped_mm(grad, weight.transpose(1, 2), self.counts)

    def linear_weight_grad(self, x, grad):
        return _grouped_outer(x, grad, self.counts)

    def sum(self, t):  # [P,d] -> [C,d], over all rows of each class
        return self.onehot.t() @ t

    stats_sum = sum  # over the rows in the statistics (all of them)

    def spread(self, p):  # [C,d] -> [P,d]
        return self.onehot @ p

    def spread_where_in_stats(self, p):
        return self.onehot @ p

    def row_dot(self, a, w):  # <a_i, w[c_i]> -> [P]
        return (a @ w.t()).gather(1, self.classes[:, None])[:, 0]

    def outer(self, g, w):  # g_i * w[c_i] -> [P,d]
        return (self.onehot * g[:, None]) @ w

    def scalar_sum(self, g):  # [P] -> [C]
        return g @ self.onehot

    def weighted_sum(self, a, g):  # sum over each class's rows of g_i a_i -> [C,d]
        return (self.onehot * g[:, None]).t() @ a


class _Bank:
    """Rows [C,N,d], ``valid`` [C,N] slots in the statistics; per-class values broadcast as views."""

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype) -> None:
        self.mask = valid.to(dtype)[:, None, :]  # [C,1,N]: sums over valid slots are one bmm
        self.in_stats = self.mask.sum(dim=2)[:, 0]
        self.full = bool(valid.all())  # then per-class terms broadcast without a [C,N,d] mask product

    def linear(self, x, weight):
        return torch.bmm(x, weight)

    def linear_input_grad(self, grad, weight):
        return torch.bmm(grad, weight.transpose(1, 2))

    def linear_weight_grad(self, x, grad):
        return torch.bmm(x.transpose(1, 2), grad)

    def sum(self, t):
        return t.sum(dim=1)

    def stats_sum(self, t):
        return torch.bmm(self.mask, t)[:, 0]

    def spread(self, p):
        return p[:, None, :]

    def spread_where_in_stats(self, p):
        return p[:, None, :] if self.full else self.mask.transpose(1, 2) * p[:, None, :]

    def row_dot(self, a, w):
        return torch.bmm(a, w[:, :, None])[:, :, 0]

    def outer(self, g, w):
        return g[:, :, None] * w[:, None, :]

    def scalar_sum(self, g):
        return g.sum(dim=1)

    def weighted_sum(self, a, g):
        return torch.bmm(g[:, None, :], a)[:, 0]


class _SelectorMLP(torch.autograd.Function):
    """Training-mode scores of rows x by their class's MLP, Linear, BN (class statistics),
    LeakyReLU, Linear; returns the scores and the per-class mean and biased variance of the
    first layer's output (for the running statistics).

    The first bias is left out of the product: batch norm subtracts the class mean, so it
    cancels (its gradient is exactly zero), and it is added back to the reported mean only.
    With h the centred first layer, r = 1/sqrt(var + eps), y = h r gamma + beta, a = leaky(y),
    s = <a, w2> + b2, and u = dL/dy, the backward is
        dL/dgamma = r sum(u h),  dL/dbeta = sum(u)  (sums over each class's rows),
        dL/dh = gamma r (u - [in stats] (sum(u) + h r^2 sum(u h)) / n),
    and the constant row term of dL/dh enters dL/dW1 as a rank-one (sum of x) x (term) product.
    """

    @staticmethod
    def forward(ctx, x, weight1, bn_weight, bn_bias, weight2, bias2, layout, eps):  # type: ignore[override]
        n = layout.in_stats.clamp_min(1)[:, None]
        h = layout.linear(x, weight1)
        mean = layout.stats_sum(h) / n
        h = h.sub_(layout.spread(mean))                          # centred, in place
        var = layout.stats_sum(h.square()) / n
        rstd = torch.rsqrt(var + eps)
        a = torch.addcmul(layout.spread(bn_bias), h, layout.spread(bn_weight * rstd))
        a = F.leaky_relu_(a, SLOPE)
        scores = layout.row_dot(a, weight2) + layout.spread(bias2[:, None])[..., 0]
        ctx.layout = layout
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, weight1, bn_weight, weight2, h, a, rstd, n)
        return scores, mean, var

    @staticmethod
    def backward(ctx, grad_scores, _grad_mean, _grad_var):  # type: ignore[override]
        x, weight1, bn_weight, weight2, h, a, rstd, n = ctx.saved_tensors
        layout = ctx.layout
        grad_bias2 = layout.scalar_sum(grad_scores)
        grad_weight2 = layout.weighted_sum(a, grad_scores)
        # u = dL/dy: the second layer's weight per row, through the LeakyReLU (its sign is a's).
        u = torch.ops.aten.leaky_relu_backward(layout.outer(grad_scores, weight2), a, SLOPE, True)
        grad_beta = layout.sum(u)
        grad_gamma = layout.sum(u * h) * rstd
        scale = bn_weight * rstd
        # dL/dh = scale (u - in_stats * (grad_beta + h rstd grad_gamma) / n), without the constant row term:
        grad_h = torch.addcmul(u.mul_(layout.spread(scale)), h,
                               layout.spread_where_in_stats(scale * rstd * grad_gamma / n), value=-1.0)
        shift = scale * grad_beta / n                              # the constant row term, per class
        grad_x = grad_w1 = None
        if ctx.needs_input_grad[0]:
            grad_x = layout.linear_input_grad(grad_h - layout.spread_where_in_stats(shift), weight1)
        if ctx.needs_input_grad[1]:
            x_sum = layout.stats_sum(x)                            # [C,d], rows in the statistics
            grad_w1 = layout.linear_weight_grad(x, grad_h) - x_sum[:, :, None] * shift[:, None, :]
        return grad_x, grad_w1, grad_gamma, grad_beta, grad_weight2, grad_bias2, None, None


class ClassSelectors(nn.Module):
    """C selector MLPs in batched form: Linear(d,d), class-wise BN, LeakyReLU(0.2), Linear(d,1)."""

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes, self.dim, self.momentum, self.eps = num_classes, dim, momentum, eps
        bound = 1 / dim ** 0.5  # nn.Linear's default initialisation
        self.weight1 = nn.Parameter(torch.empty(num_classes, dim, dim).uniform_(-bound, bound))
        self.bias1 = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bn_weight = nn.Parameter(torch.ones(num_classes, dim))
        self.bn_bias = nn.Parameter(torch.zeros(num_classes, dim))
        self.weight2 = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias2 = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))
        self.register_buffer("running_mean", torch.zeros(num_classes, dim))
        self.register_buffer("running_var", torch.ones(num_classes, dim))

    def score_pixels(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Selector logits [P] of pixel vectors x [P,d], each by the MLP of its class."""
        if len(x) == 0:
            return x.new_zeros(0)
        order = torch.argsort(classes, stable=True)
        layout = _Pixels(classes[order], self.num_classes, x.dtype)
        scores_sorted = self._scores(x[order], layout)
        return torch.empty_like(scores_sorted).scatter_(0, order, scores_sorted)

    def score_bank(self, bank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Selector logits [C,N] of a bank [C,N,d]; ``valid`` [C,N] marks filled slots."""
        return self._scores(bank, _Bank(valid, bank.dtype))

    def _scores(self, x: torch.Tensor, layout: _Pixels | _Bank) -> torch.Tensor:
        if self.training:
            scores, mean, var = _SelectorMLP.apply(x, self.weight1, self.bn_weight, self.bn_bias, self.weight2,
                                                   self.bias2, layout, self.eps)
            self._update_running(mean + self.bias1, var, layout.in_stats)
            return scores
        # Eval: batch norm is the affine map of the running statistics, folded into the first layer.
        scale = self.bn_weight * torch.rsqrt(self.running_var + self.eps)
        shift = (self.bias1 - self.running_mean) * scale + self.bn_bias
        a = F.leaky_relu(layout.linear(x, self.weight1 * scale[:, None, :]) + layout.spread(shift), SLOPE)
        return layout.row_dot(a, self.weight2) + layout.spread(self.bias2[:, None])[..., 0]

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, counts: torch.Tensor) -> None:
        # Like BatchNorm1d: unbiased variance in the running estimate; classes absent from the batch keep theirs.
        seen = (counts > 1)[:, None]
        unbiased = var * (counts / (counts - 1).clamp_min(1))[:, None]
        m = self.momentum
        self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean.detach(), self.running_mean))
        self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * unbiased.detach(), self.running_var))


def rescale_to_mean_one(weights: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Divide each weight by its class's mean weight, so each class's weights average 1."""
    sums = weights.new_zeros(num_classes).index_add_(0, classes, weights)
    counts = torch.bincount(classes, minlength=num_classes).to(weights.dtype)
    return weights * (counts / sums.clamp_min(1e-12))[classes]
