"""Segmentation metrics from a confusion matrix."""

from __future__ import annotations

import torch

from trainer.data import IGNORE_INDEX


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts, rows = true class, columns = predicted; ignored pixels are left out."""
    valid = labels != IGNORE_INDEX
    index = labels[valid] * num_classes + predictions[valid]
    return torch.bincount(index.flatten(), minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of each class; NaN for a class that is neither in the labels nor predicted."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp_min(1), torch.nan)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur (in labels or predictions)."""
    return float(torch.nanmean(iou_per_class(confusion)))
