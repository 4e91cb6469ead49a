"""The loss terms of the method, each a small function of tensors.

Contrastive loss in the paper's form, for pixel vectors z_i of class c (student, after
the prediction head) and memory vectors m_j of class c, with selector weights w_i, v_j:

    L_c = 1/(M_c N_c) * sum_ij w_i v_j (1 - cos(z_i, m_j))
        = (W_c V_c - <sum_i w_i z_i/|z_i|, sum_j v_j m_j/|m_j|>) / (M_c N_c)

The second line is what is computed: per-class weighted sums, O((M+N)d) instead of the
O(MNd) similarity matrix, so the bank size costs almost nothing. ``tests/`` checks it
against the direct formula.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.data import IGNORE_INDEX


def sigmoid_ramp_up(iteration: int, length: int) -> float:
    """exp(-5 (1 - t)^2) for t = iteration/length, then 1 (Laine & Aila; the official code)."""
    if length <= 0 or iteration >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - iteration / length) ** 2)


def pseudo_label_weights(confidence: torch.Tensor, power: float, ramp: float) -> torch.Tensor:
    """Per-pixel weight of the pseudo-label CE: teacher max-probability ** power, times the ramp-up."""
    return ramp * confidence.pow(power)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, pixel_weights: torch.Tensor,
                           class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all pixels of pixel_weight * class_weight[label] * CE (ignored pixels count as 0)."""
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    weights = pixel_weights * (labels != IGNORE_INDEX)
    if class_weights is not None:
        weights = weights * class_weights[labels.clamp_max(len(class_weights) - 1)]
    return (ce * weights).mean()


def supervised_ce(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits, labels, weight=class_weights, ignore_index=IGNORE_INDEX)


def entropy_term(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy (in [0, 1]) of the softmax over valid pixels."""
    p = logits.softmax(dim=1)
    entropy = -(p * torch.log(p + 1e-30)).sum(dim=1) / math.log(logits.shape[1])
    valid = valid.to(entropy.dtype)
    return (entropy * valid).sum() / valid.sum().clamp_min(1)


def median_frequency_weights(frequencies: torch.Tensor) -> torch.Tensor:
    """sqrt(median / frequency) per class; classes never seen get the largest weight."""
    freq = frequencies.double()
    weights = freq.quantile(0.5) / freq  # numpy's median: the mean of the two middle values
    finite = torch.isfinite(weights)
    fallback = weights[finite].max() if bool(finite.any()) else torch.tensor(1.0, dtype=freq.dtype)
    weights = torch.where(finite, weights, fallback)
    return weights.sqrt().float()


def class_pixel_counts(labels: torch.Tensor, num_classes: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) pixel count per class, ignoring the ignore label."""
    valid = labels != IGNORE_INDEX
    w = valid.to(torch.float64) if weights is None else (weights * valid).double()
    return torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(
        0, labels.clamp_max(num_classes - 1).flatten(), w.flatten())


# --- contrastive losses ---------------------------------------------------------------------

def contrastive_paper(z: torch.Tensor, classes: torch.Tensor, w: torch.Tensor,
                      bank: torch.Tensor, valid: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The paper's loss in closed form.

    z [P,d] pixel vectors of class ``classes`` [P] with weights w [P]; bank [C,N,d] with
    ``valid`` [C,N] slots and weights v [C,N]. Classes with fewer than two pixels or two
    memory vectors are skipped (as in the official code); the sum is divided by C.
    """
    num_classes = bank.shape[0]
    z_hat = F.normalize(z, dim=1)
    m_hat = F.normalize(bank, dim=2)
    v = v * valid
    pixel_sum = z.new_zeros(num_classes, z.shape[1]).index_add_(0, classes, w[:, None] * z_hat)
    weight_sum = z.new_zeros(num_classes).index_add_(0, classes, w)
    pixel_count = torch.bincount(classes, minlength=num_classes).to(z.dtype)
    memory_sum = (v[:, :, None] * m_hat).sum(dim=1)
    memory_weight = v.sum(dim=1)
    memory_count = valid.sum(dim=1).to(z.dtype)
    active = (pixel_count > 1) & (memory_count > 1)
    per_class = (weight_sum * memory_weight - (pixel_sum * memory_sum).sum(dim=1)) / (
        pixel_count * memory_count).clamp_min(1)
    return torch.where(active, per_class, 0.0).sum() / num_classes


def contrastive_paper_direct(z: torch.Tensor, classes: torch.Tensor, w: torch.Tensor,
                             bank: torch.Tensor, valid: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same loss by its definition, with the M x N similarity matrix (reference and benchmark)."""
    num_classes = bank.shape[0]
    total = z.new_zeros(())
    for c in range(num_classes):
        zc, wc = z[classes == c], w[classes == c]
        mc, vc = bank[c][valid[c]], v[c][valid[c]]
        if len(zc) > 1 and len(mc) > 1:
            distance = 1 - F.normalize(zc, dim=1) @ F.normalize(mc, dim=1).t()
            total = total + (wc[:, None] * vc[None, :] * distance).mean()
    return total / num_classes


def contrastive_infonce(z: torch.Tensor, classes: torch.Tensor, w: torch.Tensor, bank: torch.Tensor,
                        valid: torch.Tensor, v: torch.Tensor, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """InfoNCE against the bank: positives are memory of the pixel's class, negatives all other memory.

    Per pixel i of class c: -sum_j v_j s_ij / (tau V_c) + log sum_k exp(s_ik / tau), with s the
    cosine similarity, j over class c's memory and k over every memory vector. Pixels are
    weighted by w and averaged per class; classes are averaged as in ``contrastive_paper``.
    The positive part is closed-form; the log-sum-exp runs over pixel chunks, each
    recomputed in the backward pass, so memory stays bounded for large banks.
    """
    num_classes = bank.shape[0]
    z_hat = F.normalize(z, dim=1)
    m_hat = F.normalize(bank, dim=2)
    v = v * valid
    memory_sum = (v[:, :, None] * m_hat).sum(dim=1)
    memory_weight = v.sum(dim=1).clamp_min(1e-12)
    positive = (z_hat * memory_sum[classes]).sum(dim=1) / (memory_weight[classes] * temperature)
    flat = m_hat[valid]  # every memory vector, [K, d]
    if len(flat) == 0:
        return z.sum() * 0.0

    def lse(block: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(block @ flat.t() / temperature, dim=1)

    parts = [checkpoint(lse, z_hat[s:s + chunk], use_reentrant=False) if z.requires_grad else lse(z_hat[s:s + chunk])
             for s in range(0, len(z_hat), chunk)]
    per_pixel = torch.cat(parts) - positive
    pixel_count = torch.bincount(classes, minlength=num_classes).to(z.dtype)
    memory_count = valid.sum(dim=1).to(z.dtype)
    per_class = z.new_zeros(num_classes).index_add_(0, classes, w * per_pixel) / pixel_count.clamp_min(1)
    active = (pixel_count > 1) & (memory_count > 1)
    return torch.where(active, per_class, 0.0).sum() / num_classes


def contrastive_infonce_direct(z: torch.Tensor, classes: torch.Tensor, w: torch.Tensor, bank: torch.Tensor,
                               valid: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE by its definition: a loop over pixels' classes and the full similarity matrix."""
    num_classes = bank.shape[0]
    memory = F.normalize(bank[valid], dim=1)
    memory_class = torch.arange(num_classes, device=bank.device)[:, None].expand_as(valid)[valid]
    memory_weight = v[valid]
    total = z.new_zeros(())
    for c in range(num_classes):
        zc, wc = z[classes == c], w[classes == c]
        positives = memory_class == c
        if len(zc) > 1 and int(positives.sum()) > 1:
            logits = F.normalize(zc, dim=1) @ memory.t() / temperature
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            vp = memory_weight[positives]
            loss_i = -(log_prob[:, positives] * vp).sum(dim=1) / vp.sum()
            total = total + (wc * loss_i).mean()
    return total / num_classes
