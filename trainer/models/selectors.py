"""Per-class selectors, batched across classes.

The paper gives every class c two small MLPs (one for the pixels' features, one for the
memory bank): Linear(d,d), BN, LeakyReLU(0.2), Linear(d,1). The official code builds
2C separate modules and loops over classes. Here each MLP layer holds the weights of
all classes in one tensor:

- pixels are packed by class into zero-padded blocks of 256 rows, each block of one class,
  and the first layer is one ``bmm`` with each block's class matrix (on the CPU,
  ``grouped_mm`` over class segments was 1.5 to 1.8x slower for the whole term: it runs
  one product per class, and the per-class parameters then had to be spread over every row);
- the bank is already a [C, N, d] tensor: blocks of N rows, one per class;
- batch normalisation uses each class's own statistics (as C separate BatchNorm1d
  would).

In training mode the whole MLP is one autograd function (``_SelectorMLP``) with its
backward written out: the first-layer product and its weight gradient, and a few passes
over the [rows, d] activations, where autograd over the same ops kept and revisited more
(and computed the input gradient of detached pixels). In eval mode the batch norm is an
affine map, folded into the first layer. No Python loop over classes remains.

On the bf16 fast path (``product_dtype=torch.bfloat16``) the first layer's three products (forward,
weight gradient, input gradient) take bf16 inputs and give float32 back; everything else (the
batch norm's statistics, its backward, the second layer) stays in float32. Those products are
most of the term's arithmetic at VOC scale, and bf16 runs them 2.5 to 4.5x faster on a CPU with
AMX or AVX-512-bf16 (docs/benchmarks.md, "Bank 256: what the last 1.4x took").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.2  # LeakyReLU's negative slope in the selectors
BLOCK = 256  # rows per block of pixels: padding wastes about BLOCK/2 rows per class present


@torch.library.custom_op("semiseg::sum_blocks_by_class", mutates_args=())
def sum_blocks_by_class(t: torch.Tensor, block_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Sum the blocks t [K,...] of each class (``block_class`` [K]) into [C,...].

    An opaque op, so that a compiled term runs this same ``index_add_``: at VOC scale on the CPU
    it sums the first layer's per-block weight gradients [K,d,d] 3x faster than a one-hot [C,K]
    product, and Inductor's own lowering of it was 3.5x slower still and summed in another order.
    """
    if t.device.type == "cpu":
        return t.new_zeros(num_classes, *t.shape[1:]).index_add_(0, block_class, t)
    # On a GPU index_add_ adds with atomics, in another order each run; the product repeats itself.
    return _sum_by_one_hot_product(t, block_class, num_classes)


def _sum_by_one_hot_product(t: torch.Tensor, block_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    one_hot = F.one_hot(block_class, num_classes).to(t.dtype).t()
    return (one_hot @ t.reshape(len(t), -1)).reshape(num_classes, *t.shape[1:])


@sum_blocks_by_class.register_fake
def _(t: torch.Tensor, block_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    return t.new_empty(num_classes, *t.shape[1:])


class _Blocks:
    """Rows in blocks [K,B,d] that each belong to one class (``block_class`` [K]); ``rows`` [K,B]
    marks the rows in the statistics (filled bank slots; real pixels, not padding). The first
    layer is one ``bmm`` with each block's class matrix, and per-class values broadcast over a
    block as views, so no [rows, d] tensor is spent on spreading them."""

    def __init__(self, rows: torch.Tensor, block_class: torch.Tensor | None, num_classes: int,
                 dtype: torch.dtype, product_dtype: torch.dtype | None = None) -> None:
        self.block_class = block_class  # None: block k is class k (the bank)
        self.dtype = dtype
        self.product_dtype = product_dtype or dtype  # the first layer's products' inputs
        self.mask = rows.to(dtype)[:, None, :]  # [K,1,B]: a masked sum over rows is one bmm
        self.full = _all(rows)  # then per-class terms need no mask product
        self.num_classes = num_classes
        self.in_stats = self.to_class(self.mask.sum(dim=2))[:, 0]

    def per_block(self, p: torch.Tensor) -> torch.Tensor:  # [C,...] -> [K,...]
        return p if self.block_class is None else p[self.block_class]

    def to_class(self, t: torch.Tensor) -> torch.Tensor:  # [K,...] -> [C,...], summed over blocks
        if self.block_class is None:
            return t
        return sum_blocks_by_class(t, self.block_class, self.num_classes)

    def to_product(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.product_dtype)

    # The first layer's products: inputs in product_dtype (a no-op for what already is), results in dtype.
    def linear(self, x, weight):
        return torch.bmm(self.to_product(x), self.per_block(self.to_product(weight))).to(self.dtype)

    def linear_input_grad(self, grad, weight):
        weight = self.per_block(self.to_product(weight))
        return torch.bmm(self.to_product(grad), weight.transpose(1, 2)).to(self.dtype)

    def linear_weight_grad(self, x, grad):
        return self.to_class(torch.bmm(self.to_product(x).transpose(1, 2), self.to_product(grad)).to(self.dtype))

    def sum(self, t):  # [K,B,d] -> [C,d], over all rows
        return self.to_class(t.sum(dim=1))

    def stats_sum(self, t):  # over the rows in the statistics
        return self.to_class(torch.bmm(self.mask, t)[:, 0])

    def spread(self, p):  # [C,d] -> broadcastable [K,1,d]
        return self.per_block(p)[:, None, :]

    def spread_where_in_stats(self, p):
        return self.spread(p) if self.full else self.mask.transpose(1, 2) * self.spread(p)

    def row_dot(self, a, w):  # <a_r, w[class]> -> [K,B]
        return torch.bmm(a, self.per_block(w)[:, :, None])[:, :, 0]

    def outer(self, g, w):  # g_r w[class] -> [K,B,d]
        return g[:, :, None] * self.per_block(w)[:, None, :]

    def scalar_sum(self, g):  # [K,B] -> [C]
        return self.to_class(g.sum(dim=1, keepdim=True))[:, 0]

    def weighted_sum(self, a, g):  # sum of g_r a_r over each class's rows -> [C,d]
        return self.to_class(torch.bmm(g[:, None, :], a)[:, 0])


# The packing's shapes depend on the data (how many pixels of each class), so a compiled term
# (compile=true) runs it eagerly between its compiled pieces: said here, Dynamo does not try to
# trace it, and warns of nothing.
@torch.compiler.disable
def _all(rows: torch.Tensor) -> bool:
    return bool(rows.all())


@torch.compiler.disable
def _pack_pixels(x: torch.Tensor, classes: torch.Tensor, num_classes: int, rows: torch.Tensor | slice = slice(None)
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels x[rows] [P,d] (``classes`` theirs) into zero-padded blocks of BLOCK rows of one class:
    blocks [K,B,d], the pixels' row indices in them [P], the real rows [K,B] and each block's class [K].

    One gather from x builds the blocks, so a subset of x is never copied out first.
    """
    counts = torch.bincount(classes, minlength=num_classes)
    blocks = (counts + BLOCK - 1) // BLOCK
    block_class = torch.repeat_interleave(torch.arange(num_classes, device=x.device), blocks)
    order = torch.argsort(classes, stable=True)
    class_start = torch.cumsum(counts, 0) - counts
    row_start = (torch.cumsum(blocks, 0) - blocks) * BLOCK
    sorted_classes = classes[order]
    slot_sorted = row_start[sorted_classes] + torch.arange(len(classes), device=x.device) - class_start[sorted_classes]
    slot = torch.empty_like(slot_sorted).scatter_(0, order, slot_sorted)
    total = len(block_class) * BLOCK
    source = torch.arange(x.shape[0], device=x.device)[rows]
    source_of_slot = torch.zeros(total, dtype=torch.long, device=x.device).index_copy_(0, slot, source)
    real = torch.zeros(total, dtype=torch.bool, device=x.device).index_fill_(0, slot, True)
    packed = x.index_select(0, source_of_slot).index_fill_(0, (~real).nonzero().squeeze(1), 0.0)
    return packed.view(-1, BLOCK, x.shape[1]), slot, real.view(-1, BLOCK), block_class


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
        # The weight gradient needs x's sum over the rows in the statistics: taken here, in float32.
        x_sum = layout.stats_sum(x) if ctx.needs_input_grad[1] else None
        x = layout.to_product(x)  # kept for the backward in that dtype: half the memory in bf16
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
        ctx.save_for_backward(x, x_sum, weight1, bn_weight, weight2, h, a, rstd, n)
        return scores, mean, var

    @staticmethod
    def backward(ctx, grad_scores, _grad_mean, _grad_var):  # type: ignore[override]
        x, x_sum, weight1, bn_weight, weight2, h, a, rstd, n = ctx.saved_tensors
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
            grad_w1 = layout.linear_weight_grad(x, grad_h) - x_sum[:, :, None] * shift[:, None, :]
        return grad_x, grad_w1, grad_gamma, grad_beta, grad_weight2, grad_bias2, None, None


class ClassSelectors(nn.Module):
    """C selector MLPs in batched form: Linear(d,d), class-wise BN, LeakyReLU(0.2), Linear(d,1).

    ``product_dtype`` is the dtype of the first layer's products' inputs (default: the features'
    own); their results and the rest of the MLP stay in the features' dtype."""

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.1, eps: float = 1e-5,
                 product_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_classes, self.dim, self.momentum, self.eps = num_classes, dim, momentum, eps
        self.product_dtype = product_dtype
        bound = 1 / dim ** 0.5  # nn.Linear's default initialisation
        self.weight1 = nn.Parameter(torch.empty(num_classes, dim, dim).uniform_(-bound, bound))
        self.bias1 = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bn_weight = nn.Parameter(torch.ones(num_classes, dim))
        self.bn_bias = nn.Parameter(torch.zeros(num_classes, dim))
        self.weight2 = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias2 = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))
        self.register_buffer("running_mean", torch.zeros(num_classes, dim))
        self.register_buffer("running_var", torch.ones(num_classes, dim))

    def score_pixels(self, x: torch.Tensor, classes: torch.Tensor, rows: torch.Tensor | slice = slice(None)
                     ) -> torch.Tensor:
        """Selector logits [P] of pixel vectors x[rows] (x [N,d]; ``classes`` [P] theirs), each by the MLP
        of its class. ``rows`` (an index or a slice, default all) scores a subset without copying it out."""
        if len(classes) == 0:
            return x.new_zeros(0)
        packed, slot, real, block_class = _pack_pixels(x, classes, self.num_classes, rows)
        scores = self._scores(packed, _Blocks(real, block_class, self.num_classes, x.dtype, self.product_dtype))
        return scores.reshape(-1)[slot]

    def score_bank(self, bank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Selector logits [C,N] of a bank [C,N,d]; ``valid`` [C,N] marks filled slots."""
        return self._scores(bank, _Blocks(valid, None, self.num_classes, bank.dtype, self.product_dtype))

    def _scores(self, x: torch.Tensor, layout: _Blocks) -> torch.Tensor:
        if self.training:
            scores, mean, var = _SelectorMLP.apply(x, self.weight1, self.bn_weight, self.bn_bias, self.weight2,
                                                   self.bias2, layout, self.eps)
            self._update_running(mean + self.bias1, var, layout.in_stats)
            return scores
        # Eval: batch norm is the affine map of the running statistics, folded into the first layer.
        scale = self.bn_weight * torch.rsqrt(self.running_var + self.eps)
        shift = (self.bias1 - self.running_mean) * scale + self.bn_bias
        # In place after the product: neither bmm's nor add's backward needs the values overwritten.
        a = F.leaky_relu_(layout.linear(x, self.weight1 * scale[:, None, :]).add_(layout.spread(shift)), SLOPE)
        return layout.row_dot(a, self.weight2) + layout.spread(self.bias2[:, None])[..., 0]

    def as_separate_mlps(self) -> list[nn.Sequential]:
        """The C selectors as the separate modules the paper describes (and the official code builds), holding
        these weights: the reference the batched form is tested and timed against."""
        mlps = []
        for c in range(self.num_classes):
            mlp = nn.Sequential(nn.Linear(self.dim, self.dim), nn.BatchNorm1d(self.dim, momentum=self.momentum,
                                                                              eps=self.eps),
                                nn.LeakyReLU(SLOPE), nn.Linear(self.dim, 1)).to(self.weight1.dtype)
            with torch.no_grad():
                mlp[0].weight.copy_(self.weight1[c].t())
                mlp[0].bias.copy_(self.bias1[c])
                mlp[1].weight.copy_(self.bn_weight[c])
                mlp[1].bias.copy_(self.bn_bias[c])
                mlp[1].running_mean.copy_(self.running_mean[c])
                mlp[1].running_var.copy_(self.running_var[c])
                mlp[3].weight.copy_(self.weight2[c][None])
                mlp[3].bias.copy_(self.bias2[c:c + 1])
            mlps.append(mlp)
        return mlps

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
