"""PASCAL VOC 2012 (+SBD), Cityscapes and GTA5 -> Cityscapes from their standard layouts.

Layouts under ``data_root``:

* voc: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (21 classes; falls back to
  ``SegmentationClass``), lists ``ImageSets/Segmentation/train_aug.txt`` (or ``train.txt``)
  and ``val.txt``;
* cityscapes: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png`` (labelIds -> the 19 train ids);
* gta5_cityscapes: ``gta5/images/<n>.png`` and ``gta5/labels/<n>.png`` (labelIds) next to
  ``cityscapes/`` as above.

The paper reports on the val split; a study selects on val and retrain scores on test, so
the official val list is cut in two halves by a fixed seed: val and test.

Images are resized to ``image_size`` squared. With ``workers`` = 0 a split is decoded once
into memory (small trees, subsets); with ``workers`` > 0 it is read from disk batch by
batch by that many decoding threads (``trainer.data.stream``). Evaluation at full
resolution is not built yet (see README).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from trainer.classes import CITYSCAPES_CLASSES, VOC_CLASSES
from trainer.config import ConfigError, TrainConfig
from trainer.data.files import IGNORE, read_list, read_pair
from trainer.data.splits import load_or_make, splits_root

# Cityscapes labelIds of the 19 evaluated classes, in train-id order; every other id is ignored.
_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE, dtype=np.int64)
LABEL_ID_TO_TRAIN_ID[list(_LABEL_IDS)] = np.arange(len(_LABEL_IDS))
EVAL_SEED = 0  # the val/test halves are the same for every run


def _root(cfg: TrainConfig) -> Path:
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise ConfigError(f"data_root {cfg.data_root!r} is not a folder (dataset={cfg.dataset})")
    return root


def _split(cfg: TrainConfig, files: list[tuple[Path, Path]], num_classes: int,
           mapping: np.ndarray | None = None):  # noqa: ANN202 - a Split or a FileSplit
    """In memory (decoded once), or with ``workers`` > 0 read from disk batch by batch."""
    if cfg.workers:
        from trainer.data.stream import FileSplit

        return FileSplit(files, num_classes, cfg.image_size, mapping, cfg.workers,
                         pin_memory=cfg.device.startswith("cuda") and torch.cuda.is_available())
    from trainer.data import Split

    pairs = [read_pair(image, label, num_classes, cfg.image_size, mapping) for image, label in files]
    return Split(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))


def _halves(names: list[str]) -> tuple[list[str], list[str]]:
    if len(names) < 2:
        raise ConfigError(f"the val split has {len(names)} image(s): val and test need at least one each")
    shuffled = sorted(names)
    random.Random(EVAL_SEED).shuffle(shuffled)
    middle = len(shuffled) // 2
    return sorted(shuffled[:middle]), sorted(shuffled[middle:])


def _train_split(cfg: TrainConfig, names: list[str], dataset: str) -> tuple[list[str], list[str]]:
    return load_or_make(names, splits_root(_root(cfg)), dataset, cfg.labeled_fraction, cfg.split_seed,
                        cfg.labeled_list, cfg.unlabeled_list)


def voc(cfg: TrainConfig):  # noqa: ANN201 - SegmentationData
    from trainer.data import SegmentationData

    root = _root(cfg)
    lists = root / "ImageSets" / "Segmentation"
    train_list = lists / "train_aug.txt" if (lists / "train_aug.txt").is_file() else lists / "train.txt"
    labels = root / "SegmentationClassAug"
    if not labels.is_dir():
        labels = root / "SegmentationClass"

    def load(ids: list[str]):  # noqa: ANN202
        return _split(cfg, [(root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png") for i in ids], len(VOC_CLASSES))

    labeled, unlabeled = _train_split(cfg, read_list(train_list), "voc")
    val, test = _halves(read_list(lists / "val.txt"))
    return SegmentationData(load(labeled), load(unlabeled), load(val), load(test), len(VOC_CLASSES), VOC_CLASSES,
                            has_background=True)


def _cityscapes_names(root: Path, split: str) -> list[str]:
    folder = root / "leftImg8bit" / split
    names = sorted(str(p.relative_to(folder))[:-len("_leftImg8bit.png")] for p in folder.glob("*/*_leftImg8bit.png"))
    if not names:
        raise ConfigError(f"no images in {folder}: expected {folder}/<city>/<name>_leftImg8bit.png")
    return names


def _cityscapes_loader(cfg: TrainConfig, root: Path, split: str):  # noqa: ANN202
    def load(names: list[str]):  # noqa: ANN202
        files = [(root / "leftImg8bit" / split / f"{n}_leftImg8bit.png",
                  root / "gtFine" / split / f"{n}_gtFine_labelIds.png") for n in names]
        return _split(cfg, files, len(CITYSCAPES_CLASSES), LABEL_ID_TO_TRAIN_ID)
    return load


def cityscapes(cfg: TrainConfig, root: Path | None = None):  # noqa: ANN201 - SegmentationData
    from trainer.data import SegmentationData

    root = root or _root(cfg)
    labeled, unlabeled = _train_split(cfg, _cityscapes_names(root, "train"), "cityscapes")
    val, test = _halves(_cityscapes_names(root, "val"))
    train, evaluate = _cityscapes_loader(cfg, root, "train"), _cityscapes_loader(cfg, root, "val")
    return SegmentationData(train(labeled), train(unlabeled), evaluate(val), evaluate(test), len(CITYSCAPES_CLASSES),
                            CITYSCAPES_CLASSES, has_background=False)


class AlternatingSplit:
    """Labeled batches from the source (GTA5) and the target (Cityscapes) in turn, all run long.

    ``last_is_target`` says where the latest batch came from: the memory bank is filled from
    the target domain only.
    """

    def __init__(self, source, target) -> None:  # noqa: ANN001 - Splits
        self.source, self.target = source, target
        self.last_is_target = True
        self._calls = 0

    def __len__(self) -> int:
        return len(self.target)  # the bank's per-image budget is over the target's labeled images

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_is_target = self._calls % 2 == 1
        self._calls += 1
        return (self.target if self.last_is_target else self.source).sample(batch, generator)


def gta5_cityscapes(cfg: TrainConfig):  # noqa: ANN201 - SegmentationData
    root = _root(cfg)
    gta = root / "gta5"
    names = sorted(p.stem for p in (gta / "images").glob("*.png"))
    if not names:
        raise ConfigError(f"no images in {gta / 'images'}: expected {gta}/images/<n>.png and {gta}/labels/<n>.png")
    source = _split(cfg, [(gta / "images" / f"{n}.png", gta / "labels" / f"{n}.png") for n in names],
                    len(CITYSCAPES_CLASSES), LABEL_ID_TO_TRAIN_ID)
    target = cityscapes(cfg, root / "cityscapes")
    target.labeled = AlternatingSplit(source, target.labeled)
    return target
