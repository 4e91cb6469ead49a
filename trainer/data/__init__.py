"""Datasets as the trainer sees them: a labeled pool, an unlabeled pool, val and test.

``build_data(cfg)`` is the one entry point. Every dataset becomes a ``SegmentationData``:
its training pools hand the trainer resumable batch streams (``pool.stream(...)``, see
``trainer.data.stream``), its val and test splits yield batches to score
(``split.batches(n)``). The embedded digits live in memory as ``Split``; the real datasets
are ``trainer.data.pools``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from trainer.cache import cache_key, cached_tensors
from trainer.config import ConfigError, TrainConfig
from trainer.data.stream import BatchStream, GeneratorStream

IGNORE_INDEX = 255


@dataclass
class Split:
    """Images [N,3,H,W] float in [0,1] and labels [N,H,W] uint8 (255 = ignore), in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self), (batch,), generator=generator)
        return self.images[index], self.labels[index].long()

    def batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch):
            yield self.images[start:start + batch], self.labels[start:start + batch].long()

    def stream(self, batch: int, *, generator: torch.Generator, key: str) -> BatchStream:
        """Batches drawn with the trainer's ``generator`` (whose state its checkpoint saves)."""
        return GeneratorStream(self, batch, generator)


class TrainingPool(Protocol):
    """Where training batches come from; ``key`` names the stream (real datasets seed its batches by it)."""

    def __len__(self) -> int: ...
    def stream(self, batch: int, *, generator: torch.Generator, key: str) -> BatchStream: ...


class EvaluationSplit(Protocol):
    """Images (float in [0,1] or uint8) and labels of val or test, ``batch`` at a time at most."""

    def __len__(self) -> int: ...
    def batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class SegmentationData:
    labeled: TrainingPool
    unlabeled: TrainingPool   # its labels are never trained on (real datasets: 255 marks crop padding)
    val: EvaluationSplit
    test: EvaluationSplit
    num_classes: int
    class_names: tuple[str, ...]
    has_background: bool      # class 0 is background (ClassMix then never pastes it)

    def split(self, name: str) -> EvaluationSplit:
        if name not in ("val", "test"):
            raise ValueError(f"evaluation split {name!r}: expected 'val' or 'test'")
        return getattr(self, name)


def labeled_count(total: int, fraction: float) -> int:
    """How many of ``total`` training images keep their labels (at least two: BN needs a batch)."""
    return min(total, max(2, round(total * fraction)))


def build_data(cfg: TrainConfig) -> SegmentationData:
    if cfg.dataset == "digits":
        return _digits(cfg)
    from trainer.data import real

    loaders = {"voc": real.voc, "cityscapes": real.cityscapes, "gta5_cityscapes": real.gta5_cityscapes}
    if cfg.dataset not in loaders:
        raise ConfigError(f"dataset = {cfg.dataset!r}: choose digits, {', '.join(loaders)}")
    return loaders[cfg.dataset](cfg)


# One data seed for every run: trials of a study differ by their training seed, never
# by their data, so that their scores compare.
DATA_SEED = 0


def _digits(cfg: TrainConfig) -> SegmentationData:
    from trainer.data import digits

    def make_all() -> dict[str, torch.Tensor]:
        pools = digits.load_pools(DATA_SEED)
        scenes = {}
        for offset, (split, count) in enumerate(
                [("train", cfg.digits_scenes), ("val", cfg.digits_eval_scenes), ("test", cfg.digits_eval_scenes)], 1):
            images, labels = digits.make_scenes(pools[split], count, cfg.image_size, cfg.digits_min,
                                                cfg.digits_max, seed=DATA_SEED + offset)
            scenes[f"{split}_images"], scenes[f"{split}_labels"] = images, labels
        return scenes

    # Scenes take seconds to compose; every trial of a study needs the same ones.
    key = cache_key(size=cfg.image_size, lo=cfg.digits_min, hi=cfg.digits_max, train=cfg.digits_scenes,
                    eval=cfg.digits_eval_scenes, seed=DATA_SEED, version=digits.SCENES_VERSION)
    scenes = cached_tensors(f"digits-scenes-{key}.pt", make_all)
    train_x, train_y = scenes["train_images"], scenes["train_labels"]
    val_x, val_y = scenes["val_images"], scenes["val_labels"]
    test_x, test_y = scenes["test_images"], scenes["test_labels"]
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(DATA_SEED))
    n_labeled = labeled_count(len(train_x), cfg.labeled_fraction)
    lab, unl = order[:n_labeled], order[n_labeled:]
    if len(unl) == 0:  # everything labeled: the unlabeled stream reuses the labeled images
        unl = lab
    return SegmentationData(
        labeled=Split(train_x[lab], train_y[lab]),
        unlabeled=Split(train_x[unl], train_y[unl]),
        val=Split(val_x, val_y),
        test=Split(test_x, test_y),
        num_classes=digits.NUM_CLASSES,
        class_names=digits.CLASS_NAMES,
        has_background=True,
    )
