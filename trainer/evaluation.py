"""What one evaluation of a training run reports (torch-free, so that readers of the
records, such as ``semiseg-study status``, need not import torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The parts of the loss, in the order the trainer sums them; "total" is the weighted sum.
LOSS_PARTS = ("supervised", "pseudo_label", "entropy", "contrastive_labeled", "contrastive_unlabeled", "total")


@dataclass
class Evaluation:
    """What one evaluation reports: the study stores every field of it but ``reloaded_best``."""

    iteration: int
    split: str
    miou: float
    iou: list[float]                 # per class, NaN where a class never occurs
    losses: dict[str, float]         # mean of each loss part since the previous evaluation
    bank_fill: list[float]           # per class, fraction of bank_size in use
    images_per_second: float
    lr: float
    train_seconds: float             # training time so far, evaluations excluded
    test_miou: float | None = None   # with eval_test only: the test split scored at the same point
    # With reload_best_after only: the iteration of the best evaluation whose networks were
    # reloaded right after this one. In metrics.jsonl; the study's reports table has no column for it.
    reloaded_best: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
