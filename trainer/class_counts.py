"""The official code's class-balancing counts (its utils/class_balancing.py, ``ClassBalancing``).

With ``class_balance=running`` the project counts every step's labeled pixels (after
augmentation) and pseudo-labels from step 0, and weights from those sums after the ramp-up.
The official code counts differently, and ``official_class_counts`` reproduces it:

- labeled pixels of the first ``labeled_steps`` steps only (one labeled epoch: labeled images
  // labeled batch), as the loader gives them (before ClassMix and the augmentation); that
  count is then kept for the rest of the run;
- pseudo-labels of the last ``unlabeled_steps`` steps (a sliding window of one unlabeled
  epoch: unlabeled images // unlabeled images per step), one per image (before the views);
- no weights until both windows have been filled once (``ready``).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.losses import class_pixel_counts


def epoch_steps(images: int, batch: int) -> int:
    """Steps of one epoch, as the official code sizes its windows (int(images / batch)), at least 1."""
    return max(1, images // batch)


class WindowedClassCounts:
    """Per-class pixel counts over the official code's windows, on the training device."""

    def __init__(self, num_classes: int, labeled_steps: int, unlabeled_steps: int, device: torch.device) -> None:
        self.labeled_steps, self.unlabeled_steps = labeled_steps, unlabeled_steps
        self.labeled = torch.zeros(num_classes, dtype=torch.float64, device=device)
        # A ring of the window's per-step counts: the sum is that of the official shift-and-append.
        self.unlabeled = torch.zeros(unlabeled_steps, num_classes, dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, labels: torch.Tensor, pseudo: torch.Tensor | None) -> None:
        """Count one step's labeled batch and pseudo-labels (None: no unlabeled term, nothing counted)."""
        num_classes = len(self.labeled)
        if self.steps < self.labeled_steps:
            self.labeled += class_pixel_counts(labels, num_classes)
        slot = self.steps % self.unlabeled_steps
        self.unlabeled[slot] = 0.0 if pseudo is None else class_pixel_counts(pseudo, num_classes)
        self.steps += 1

    @property
    def ready(self) -> bool:
        """Both windows filled once: the official code gives weights of one until then."""
        return self.steps >= max(self.labeled_steps, self.unlabeled_steps)

    def counts(self) -> torch.Tensor:
        return self.labeled + self.unlabeled.sum(dim=0)

    def state_dict(self) -> dict[str, Any]:
        return {"labeled": self.labeled.clone(), "unlabeled": self.unlabeled.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled = state["labeled"].to(self.labeled.device)
        self.unlabeled = state["unlabeled"].to(self.unlabeled.device)
        self.steps = state["steps"]
