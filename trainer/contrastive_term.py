"""The whole contrastive term of a batch: the selectors' weights, then the loss against the bank.

One function, so that ``Trainer`` and ``benchmarks/contrastive.py`` run the same code, and so
that ``compile=true`` can hand it to ``torch.compile`` whole. In eager mode about half of the
term's time at VOC scale is elementwise passes over the [rows, 256] activations (the selector
layers' batch norm, leaky ReLU and their backward); Inductor fuses them into loops of its own.
The classes present change from batch to batch, so the term compiles with dynamic shapes, and
its data-dependent steps (packing pixels into blocks by class) run eagerly between the
compiled pieces.
"""

from __future__ import annotations

from typing import Callable

import torch

from trainer import losses
from trainer.models.selectors import ClassSelectors, rescale_to_mean_one

Term = Callable[..., torch.Tensor]


def contrastive_term(feature_selectors: ClassSelectors, memory_selectors: ClassSelectors, z: torch.Tensor,
                     classes: torch.Tensor, bank: torch.Tensor, filled: torch.Tensor, *, loss: str = "paper",
                     temperature: float = 0.1, official_memory_weights: bool = False) -> torch.Tensor:
    """The loss of pixel vectors ``z`` [M,d] of ``classes`` [M] against ``bank`` [C,N,d] (``filled``
    [C,N] marks the slots in use), each side weighted by its selector."""
    num_classes = bank.shape[0]
    # Sigmoid weights rescaled to mean 1 per class. The pixel selector sees detached vectors, so
    # it learns only through the weights it gives.
    w = rescale_to_mean_one(torch.sigmoid(feature_selectors.score_pixels(z.detach(), classes)), classes, num_classes)
    if official_memory_weights:
        v = filled.to(z.dtype)
    else:
        s = torch.sigmoid(memory_selectors.score_bank(bank, filled)) * filled
        v = s * (filled.sum(dim=1, keepdim=True) / s.sum(dim=1, keepdim=True).clamp_min(1e-12))
    if loss == "infonce":
        return losses.contrastive_infonce(z, classes, w, bank, filled, v, temperature)
    return losses.contrastive_paper(z, classes, w, bank, filled, v)


def build_term(compile: bool) -> Term:
    """``contrastive_term`` as the trainer runs it: compiled (dynamic shapes) or eager."""
    return torch.compile(contrastive_term, dynamic=True) if compile else contrastive_term
