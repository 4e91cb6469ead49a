"""Per-class selectors, batched across classes.

The paper gives every class c two small MLPs (one for the pixels' features, one for the
memory bank): Linear(d,d), BN, LeakyReLU(0.2), Linear(d,1). The official code builds
2C separate modules and loops over classes. Here each MLP layer holds the weights of
all classes in one tensor:

- pixels are sorted by class and the first layer is one grouped matrix product
  (``torch.nn.functional.grouped_mm``) over the class segments;
- the bank is already a [C, N, d] tensor, so its first layer is one ``bmm``;
- batch normalisation uses each class's own statistics (as C separate BatchNorm1d
  would), computed with ``index_add``.

No Python loop over classes remains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _GroupedLinear(torch.autograd.Function):
    """y[i] = x[i] @ W[g(i)] for rows sorted into groups ending at ``ends`` (cumulative counts)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, ends)
        return F.grouped_mm(x, weight, offs=ends)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, ends = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = F.grouped_mm(grad, weight.transpose(1, 2).contiguous(), offs=ends)
        grad_w = F.grouped_mm(x.t().contiguous(), grad, offs=ends)
        return grad_x, grad_w, None


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (sorted by ``groups``) times their group's matrix: [P,d] x [C,d,k] -> [P,k]."""
    num_groups = weight.shape[0]
    counts = torch.bincount(groups, minlength=num_groups)
    grouped_ok = x.dtype in _GROUPED_DTYPES and (x.device.type == "cpu" or x.dtype == torch.bfloat16)
    if grouped_ok and x.shape[1] % 4 == 0 and weight.shape[2] % 4 == 0:
        # The kernel wants 16-byte-aligned strides: pad the rows to a multiple of 4 with zeros.
        pad = (-len(x)) % 4
        xp = F.pad(x, (0, 0, 0, pad)) if pad else x
        counts = counts.clone()
        counts[-1] += pad
        ends = counts.cumsum(0).to(torch.int32)
        return _GroupedLinear.apply(xp.contiguous(), weight, ends)[:len(x)]
    # Reference path for other dtypes (float64 in the tests): one product per group.
    pieces = torch.split(x, counts.tolist())
    return torch.cat([piece @ weight[c] for c, piece in enumerate(pieces)])


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
        xs, cs = x[order], classes[order]
        # Per-class rows are picked and summed with a one-hot matrix product rather than
        # fancy indexing: the backward of param[cs] is a serial scatter-add, 20x slower.
        onehot = F.one_hot(cs, self.num_classes).to(x.dtype)  # [P, C]
        h = grouped_linear(xs, self.weight1, cs) + onehot @ self.bias1
        if self.training:
            counts = onehot.sum(dim=0).clamp_min(1)[:, None]
            mean = onehot.t() @ h / counts
            centred = h - onehot @ mean
            var = onehot.t() @ centred.square() / counts
            self._update_running(mean, var, onehot.sum(dim=0))
            h = centred * (onehot @ torch.rsqrt(var + self.eps))
        else:
            h = (h - onehot @ self.running_mean) * (onehot @ torch.rsqrt(self.running_var + self.eps))
        h = F.leaky_relu(h * (onehot @ self.bn_weight) + onehot @ self.bn_bias, 0.2)
        scores_sorted = (h * (onehot @ self.weight2)).sum(dim=1) + onehot @ self.bias2
        return torch.empty_like(scores_sorted).scatter_(0, order, scores_sorted)

    def score_bank(self, bank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Selector logits [C,N] of a bank [C,N,d]; ``valid`` [C,N] marks filled slots."""
        h = torch.baddbmm(self.bias1[:, None, :], bank, self.weight1)
        mask = valid[:, :, None].to(h.dtype)
        counts = mask.sum(dim=1)
        if self.training:
            mean = (h * mask).sum(dim=1) / counts.clamp_min(1)
            centred = h - mean[:, None]
            var = (centred ** 2 * mask).sum(dim=1) / counts.clamp_min(1)
            self._update_running(mean, var, counts[:, 0])
            h = centred / torch.sqrt(var[:, None] + self.eps)
        else:
            h = (h - self.running_mean[:, None]) / torch.sqrt(self.running_var[:, None] + self.eps)
        h = F.leaky_relu(h * self.bn_weight[:, None] + self.bn_bias[:, None], 0.2)
        return (h * self.weight2[:, None]).sum(dim=2) + self.bias2[:, None]

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
