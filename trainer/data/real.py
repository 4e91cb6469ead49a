"""PASCAL VOC 2012 (+SBD), Cityscapes and GTA5 -> Cityscapes from their standard layouts.

Layouts under ``data_root``:

* voc: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (21 classes; falls back to
  ``SegmentationClass``), lists ``ImageSets/Segmentation/train_aug.txt`` (or ``train.txt``)
  and ``val.txt``; ``data_root`` is that VOC2012 folder, or the archive's root above it
  (holding ``VOCdevkit/VOC2012``, or ``VOCdevkit`` itself);
* cityscapes: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png`` (labelIds -> the 19 train ids);
* gta5_cityscapes: ``gta5/images/<n>.png`` and ``gta5/labels/<n>.png`` (labelIds) next to
  ``cityscapes/`` as above.

The paper reports on the val split; a study selects on val and retrain scores on test, so
the official val list is cut in two halves by a fixed seed: val and test.

Training images are cut into random ``image_size`` crops at their stored resolution
(``resize_height`` first rescales every image, as Cityscapes' 2048x1024 is halved in the
paper); val and test are scored on whole images against the stored labels
(``trainer.data.pools``). With ``workers`` = 0 each split is decoded once into memory (small
trees, subsets); with ``workers`` > 0 it is read from disk by that many processes.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from trainer.classes import CITYSCAPES_CLASSES, VOC_CLASSES
from trainer.config import ConfigError, TrainConfig
from trainer.data import SegmentationData
from trainer.data.files import IGNORE, ImageFiles, read_list
from trainer.data.pools import CropPool, FullImages
from trainer.data.splits import load_or_make, splits_root
from trainer.data.stream import AlternatingStream

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


def _files(cfg: TrainConfig, pairs: list[tuple[Path, Path]], num_classes: int,
           mapping: np.ndarray | None = None) -> ImageFiles:
    return ImageFiles(tuple(pairs), num_classes, mapping, cfg.resize_height)


def _pin(cfg: TrainConfig) -> bool:
    return cfg.device != "cpu" and torch.cuda.is_available()


def _train_pool(cfg: TrainConfig, files: ImageFiles, labeled: bool = True) -> CropPool:
    return CropPool(files, cfg.image_size, cfg.workers, _pin(cfg), labeled)


def _eval_images(cfg: TrainConfig, files: ImageFiles) -> FullImages:
    return FullImages(files, cfg.workers, _pin(cfg))


def _halves(names: list[str]) -> tuple[list[str], list[str]]:
    if len(names) < 2:
        raise ConfigError(f"the val split has {len(names)} image(s): val and test need at least one each")
    shuffled = sorted(names)
    random.Random(EVAL_SEED).shuffle(shuffled)
    middle = len(shuffled) // 2
    return sorted(shuffled[:middle]), sorted(shuffled[middle:])


def _train_split(cfg: TrainConfig, names: list[str], dataset: str,
                 tree: Path | None = None) -> tuple[list[str], list[str]]:
    """The labeled and unlabeled names; made split lists go next to ``tree`` (default: data_root)."""
    return load_or_make(names, splits_root(tree or _root(cfg)), dataset, cfg.labeled_fraction, cfg.split_seed,
                        cfg.labeled_list, cfg.unlabeled_list)


# Where the VOC2012 folder sits below the root of the archive (VOCtrainval_11-May-2012.tar).
_VOC_PLACES = (".", "VOC2012", "VOCdevkit/VOC2012")


def _voc_root(cfg: TrainConfig) -> Path:
    """The VOC2012 folder (the one holding JPEGImages): data_root, or where the archive puts it below."""
    root = _root(cfg)
    for place in _VOC_PLACES:
        if (root / place / "JPEGImages").is_dir():
            return root / place
    # A level or two deeper (an archive unpacked into a folder of its own): name it rather than guess.
    found = sorted(p.parent for pattern in ("*/VOC2012/JPEGImages", "*/*/VOC2012/JPEGImages")
                   for p in root.glob(pattern) if p.is_dir())
    hint = (f"; the VOC 2012 folder seems to be {found[0]}: give data_root={found[0]}" if found else
            "; give the VOC2012 folder of the archive (VOCdevkit/VOC2012), or the folder that holds VOCdevkit")
    raise ConfigError(f"data_root {cfg.data_root!r} holds no VOC 2012 tree (no JPEGImages/ in it, in VOC2012/ "
                      f"or in VOCdevkit/VOC2012/){hint}")


def voc(cfg: TrainConfig) -> SegmentationData:
    """PASCAL VOC 2012 with the SBD labels: 21 classes, background first."""
    root = _voc_root(cfg)
    lists = root / "ImageSets" / "Segmentation"
    train_list = lists / "train_aug.txt" if (lists / "train_aug.txt").is_file() else lists / "train.txt"
    labels = root / "SegmentationClassAug"
    if not labels.is_dir():
        labels = root / "SegmentationClass"

    def files(ids: list[str]) -> ImageFiles:
        return _files(cfg, [(root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png") for i in ids], len(VOC_CLASSES))

    labeled, unlabeled = _train_split(cfg, read_list(train_list), "voc", tree=root)
    val, test = _halves(read_list(lists / "val.txt"))
    return SegmentationData(_train_pool(cfg, files(labeled)), _train_pool(cfg, files(unlabeled), labeled=False),
                            _eval_images(cfg, files(val)), _eval_images(cfg, files(test)),
                            len(VOC_CLASSES), VOC_CLASSES, has_background=True)


def _cityscapes_names(root: Path, split: str) -> list[str]:
    folder = root / "leftImg8bit" / split
    names = sorted(str(p.relative_to(folder))[:-len("_leftImg8bit.png")] for p in folder.glob("*/*_leftImg8bit.png"))
    if not names:
        raise ConfigError(f"no images in {folder}: expected {folder}/<city>/<name>_leftImg8bit.png")
    return names


def _cityscapes_files(cfg: TrainConfig, root: Path, split: str, names: list[str]) -> ImageFiles:
    pairs = [(root / "leftImg8bit" / split / f"{n}_leftImg8bit.png",
              root / "gtFine" / split / f"{n}_gtFine_labelIds.png") for n in names]
    return _files(cfg, pairs, len(CITYSCAPES_CLASSES), LABEL_ID_TO_TRAIN_ID)


def cityscapes(cfg: TrainConfig, root: Path | None = None) -> SegmentationData:
    """Cityscapes fine annotations, labelIds mapped to the 19 train ids."""
    root = root or _root(cfg)
    labeled, unlabeled = _train_split(cfg, _cityscapes_names(root, "train"), "cityscapes")
    val, test = _halves(_cityscapes_names(root, "val"))
    return SegmentationData(_train_pool(cfg, _cityscapes_files(cfg, root, "train", labeled)),
                            _train_pool(cfg, _cityscapes_files(cfg, root, "train", unlabeled), labeled=False),
                            _eval_images(cfg, _cityscapes_files(cfg, root, "val", val)),
                            _eval_images(cfg, _cityscapes_files(cfg, root, "val", test)),
                            len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES, has_background=False)


class AlternatingPool:
    """Labeled images of the source (GTA5) and the target (Cityscapes), drawn in turn all run long."""

    def __init__(self, source: CropPool, target: CropPool) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.target)  # the bank's per-image budget is over the target's labeled images

    def stream(self, batch: int, *, generator: torch.Generator, key: str) -> AlternatingStream:
        return AlternatingStream(self.source.stream(batch, generator=generator, key=f"{key}/source"),
                                 self.target.stream(batch, generator=generator, key=f"{key}/target"))


def gta5_cityscapes(cfg: TrainConfig) -> SegmentationData:
    """Semi-supervised domain adaptation: labeled GTA5, and Cityscapes as ``cityscapes`` gives it."""
    root = _root(cfg)
    gta = root / "gta5"
    names = sorted(p.stem for p in (gta / "images").glob("*.png"))
    if not names:
        raise ConfigError(f"no images in {gta / 'images'}: expected {gta}/images/<n>.png and {gta}/labels/<n>.png")
    source = _files(cfg, [(gta / "images" / f"{n}.png", gta / "labels" / f"{n}.png") for n in names],
                    len(CITYSCAPES_CLASSES), LABEL_ID_TO_TRAIN_ID)
    data = cityscapes(cfg, root / "cityscapes")
    data.labeled = AlternatingPool(_train_pool(cfg, source), data.labeled)
    return data
