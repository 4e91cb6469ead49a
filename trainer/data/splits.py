"""Labeled / unlabeled splits as plain text lists, one image name per line.

``DATA_ROOT/splits/<dataset>/<fraction>_<seed>/labeled.txt`` and ``unlabeled.txt`` (in the
cache when DATA_ROOT is read-only) are made from
a seeded permutation of the sorted training list, so the same (fraction, seed) gives
the same files on every machine. A user's own lists (TrainConfig ``labeled_list`` and
``unlabeled_list``) replace them. Paper fractions: VOC 1/50, 1/20, 1/8 of 10,582;
Cityscapes 1/30, 1/8, 1/4 of 2,975.
"""

from __future__ import annotations

import random
from pathlib import Path

from trainer.atomic import write_text_atomic
from trainer.config import ConfigError
from trainer.data.files import read_list


def split_folder(root: Path, dataset: str, fraction: float, seed: int) -> Path:
    return root / dataset / f"{fraction:g}_{seed}"


def make_split(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(labeled, unlabeled): ``round(len * fraction)`` names (at least 2) drawn by ``seed``."""
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ConfigError("the training list names an image twice")
    count = min(len(ordered), max(2, round(len(ordered) * fraction)))
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    labeled = sorted(shuffled[:count])
    unlabeled = sorted(shuffled[count:]) or labeled  # everything labeled: the unlabeled stream reuses them
    return labeled, unlabeled


def load_or_make(names: list[str], root: Path, dataset: str, fraction: float, seed: int,
                 labeled_list: str = "", unlabeled_list: str = "") -> tuple[list[str], list[str]]:
    """The user's lists if given, else the stored lists of (fraction, seed), made on first use."""
    if labeled_list:
        labeled = [list_name(line) for line in read_list(Path(labeled_list))]
        unlabeled = ([list_name(line) for line in read_list(Path(unlabeled_list))] if unlabeled_list
                     else sorted(set(names) - set(labeled)) or labeled)
        return _known(names, labeled, labeled_list), _known(names, unlabeled, unlabeled_list or labeled_list)
    folder = split_folder(root, dataset, fraction, seed)
    if (folder / "labeled.txt").is_file():
        return (_known(names, read_list(folder / "labeled.txt"), folder / "labeled.txt"),
                _known(names, read_list(folder / "unlabeled.txt"), folder / "unlabeled.txt"))
    labeled, unlabeled = make_split(names, fraction, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
        write_text_atomic(folder / name, "\n".join(lines) + "\n")
    return labeled, unlabeled


# What other code bases write in their split lists around the name (UniMatch, for one, writes
# "JPEGImages/ID.jpg SegmentationClass/ID.png" or "leftImg8bit/train/CITY/NAME_leftImg8bit.png ...").
_PREFIXES = ("JPEGImages/", "leftImg8bit/train/", "images/")
_SUFFIXES = ("_leftImg8bit.png", ".jpg", ".png")


def list_name(line: str) -> str:
    """The image name of a split-list line: a bare name, or the image path (first column) of another layout's list."""
    name = line.split()[0].lstrip("/")
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _known(names: list[str], listed: list[str], path: str | Path) -> list[str]:
    known = set(names)
    for name in listed:
        if name not in known:
            raise ConfigError(f"split list {path} names {name!r}, which is not in the training images")
    return listed


def splits_root(data_root: Path) -> Path:
    """``DATA_ROOT/splits`` when it can be written (next to the data it describes), else the cache."""
    import hashlib
    import os

    from trainer.cache import cache_dir

    if os.access(data_root, os.W_OK):
        return data_root / "splits"
    return cache_dir() / "splits" / hashlib.sha1(str(data_root.resolve()).encode()).hexdigest()[:12]
