"""The class-wise memory bank: per class, the newest ``capacity`` good feature vectors.

One tensor [C, N, d] of unit vectors on the training device, used as C ring buffers. An update takes
candidate pixel vectors (the teacher's projections of labeled pixels it predicts
correctly and confidently), keeps per image and class the ``per_image`` best ranked by
the selector (scoring only the candidates that compete for a place), and writes them as
the newest entries of their class, dropping the oldest.
All of it without a Python loop over classes or images.
"""

from __future__ import annotations

from typing import Callable

import torch

# Every candidate's score [P], or a function from the candidates to score (an index tensor, or
# slice(None) for all of them) to their scores.
Scores = torch.Tensor | Callable[[torch.Tensor | slice], torch.Tensor]
POLICIES = ("highest", "lowest", "random")


def bank_candidates(logits: torch.Tensor, labels: torch.Tensor, threshold: float, ignore_index: int = 255
                    ) -> torch.Tensor:
    """[B,h,w] mask of the pixels that may enter the bank: the teacher's prediction is the
    true label and its confidence exceeds ``threshold`` (logits [B,C,h,w], labels [B,h,w])."""
    confidence, prediction = logits.softmax(dim=1).max(dim=1)
    return (prediction == labels) & (confidence > threshold) & (labels != ignore_index)


def per_image_quota(bank_size: int, labeled_images: int, num_classes: int, voc_factor: bool = False) -> int:
    """Vectors an update keeps per labeled image and class: round(N / |X_l|), at least 1.

    ``voc_factor``: times C/3, truncated, as the official code does on PASCAL VOC (an image
    there shows about 3 classes, so a class's share of the whole batch is C/3 times larger).
    """
    quota = round(bank_size / labeled_images)
    if voc_factor:
        quota = int(num_classes / 3 * quota)
    return max(1, quota)


class ClassMemoryBank:
    def __init__(self, num_classes: int, capacity: int, dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.num_classes, self.capacity, self.dim = num_classes, capacity, dim
        self.vectors = torch.zeros(num_classes, capacity, dim, device=device, dtype=dtype)
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.head = torch.zeros(num_classes, dtype=torch.long, device=device)  # next slot to write

    def valid(self) -> torch.Tensor:
        """[C, N] True where a slot holds a vector (slots fill from 0 before the ring wraps)."""
        slots = torch.arange(self.capacity, device=self.count.device)
        return slots[None, :] < self.count[:, None]

    def fill(self) -> torch.Tensor:
        """Fraction of each class's capacity in use, [C]."""
        return self.count.float() / self.capacity

    def newest(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest min(n, capacity) slots of every class: vectors [C, n, d] and valid [C, n]."""
        n = min(n, self.capacity)
        k = torch.arange(n, device=self.count.device)
        slots = (self.head[:, None] - 1 - k[None, :]) % self.capacity
        vectors = torch.gather(self.vectors, 1, slots[:, :, None].expand(-1, -1, self.dim))
        return vectors, k[None, :] < self.count[:, None]

    def ordered(self, c: int) -> torch.Tensor:
        """Class c's vectors, newest first."""
        k = torch.arange(int(self.count[c]), device=self.count.device)
        return self.vectors[c, (self.head[c] - 1 - k) % self.capacity]

    @torch.no_grad()
    def add(self, features: torch.Tensor, classes: torch.Tensor, images: torch.Tensor, scores: Scores,
            per_image: int, policy: str = "highest", generator: torch.Generator | None = None) -> None:
        """Add candidates: per (image, class) the ``per_image`` best by ``policy``.

        features [P,d]; classes, images [P] (long). ``scores``: the selector's ranking, either
        [P] or a function that scores the candidates it is given (an index tensor, or
        ``slice(None)`` when all compete). A function is
        called only for the candidates that compete for a place: those of an (image, class)
        with more than ``per_image`` of them, and those of a class that receives more than its
        capacity in this update. At PASCAL VOC scale that is the background alone, so the
        selector skips about 40% of the pixels, as the official code's does. ``highest`` keeps
        the top-scored (the paper), ``lowest`` the bottom-scored (what the official code's
        ascending sort does), ``random`` ignores the scores.

        A class's new vectors are written in arrival order (the official code's order too),
        except in a class that receives more than its capacity: there the best are written last,
        so the worst are the ones dropped.
        """
        if policy not in POLICIES:
            raise ValueError(f"bank policy {policy!r}: expected one of {POLICIES}")
        if len(features) == 0:
            return
        device = features.device
        group = images * self.num_classes + classes
        groups, group_of, group_size = torch.unique(group, return_inverse=True, return_counts=True)
        arriving = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        arriving.index_add_(0, groups % self.num_classes, group_size.clamp_max(per_image))
        overflowing = arriving > self.capacity  # [C]: this update alone brings more than the ring holds
        if policy == "random":
            key = torch.rand(len(classes), generator=generator, device=device)
        else:
            key = torch.zeros(len(classes), device=device)
            competes = (group_size > per_image)[group_of] | overflowing[classes]
            # All of them (every group over its quota) is common: a slice then indexes the features
            # as a view, where an index tensor would copy them first.
            competing = slice(None) if bool(competes.all()) else competes.nonzero().squeeze(1)
            if bool(competes.any()):
                ranked = scores(competing) if callable(scores) else scores[competing]
                key[competing] = ranked.float() * (-1.0 if policy == "highest" else 1.0)
        # Sort by (image, class) group, best (lowest key) first inside each group.
        by_key = torch.argsort(key, stable=True)
        order = by_key[torch.argsort(group_of[by_key], stable=True)]
        # unique() sorted the groups and counted them, so each group's first position is a cumsum.
        group_start = (torch.cumsum(group_size, 0) - group_size)[group_of[order]]
        rank = torch.arange(len(order), device=device) - group_start
        keep = order[rank < per_image].sort().values  # back in arrival order
        write_key = torch.where(overflowing[classes[keep]], key[keep], 0.0)
        self._write(features, keep, classes[keep], write_key)

    def _write(self, features: torch.Tensor, keep: torch.Tensor, classes: torch.Tensor, key: torch.Tensor) -> None:
        """Write features[keep] as their classes' newest, in order of decreasing ``key`` (ties in
        the order given), so the lowest key is the newest; beyond a class's capacity the first are dropped."""
        n = self.capacity
        order = torch.argsort(-key, stable=True)
        order = order[torch.argsort(classes[order], stable=True)]
        classes = classes[order]
        per_class = torch.bincount(classes, minlength=self.num_classes)
        first = torch.cumsum(per_class, 0) - per_class
        j = torch.arange(len(classes), device=classes.device) - first[classes]
        overflow = (per_class - n).clamp_min(0)  # more new vectors than slots: drop the first (worst)
        written = j >= overflow[classes]
        slot = (self.head[classes] + j - overflow[classes]) % n
        # One gather of the feature rows, after all the index work on 1-D tensors. Stored as unit
        # vectors: the loss only ever uses directions (and the official code normalises memory
        # before its selector too), so the norm is paid once, here.
        rows = keep[order][written]
        unit = torch.nn.functional.normalize(features[rows].to(self.vectors.dtype), dim=1)
        self.vectors[classes[written], slot[written]] = unit
        added = torch.minimum(per_class, torch.full_like(per_class, n))
        self.head = (self.head + added) % n
        self.count = torch.minimum(self.count + per_class, torch.full_like(self.count, n))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors.clone(), "count": self.count.clone(), "head": self.head.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["vectors"].shape) != tuple(self.vectors.shape):
            raise ValueError(f"memory bank of shape {tuple(state['vectors'].shape)} does not fit "
                             f"this run's {tuple(self.vectors.shape)} (classes, bank_size, proj_dim)")
        device = self.vectors.device
        self.vectors = state["vectors"].to(device)
        self.count = state["count"].to(device)
        self.head = state["head"].to(device)
