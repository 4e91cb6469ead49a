"""Reading images and label maps from disk, with errors that name the file.

A real dataset fails in the file, not in the trainer: a missing image, a corrupt PNG, a
label map of another size than its image, or a label value no class has. Each is a
``ConfigError`` naming the path, so ``semiseg-study`` says it in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import ConfigError

IGNORE = 255


def _open(path: Path, what: str):  # noqa: ANN202 - a PIL image
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; check data_root and the split list that names it")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ConfigError(f"{what} {path} is not a readable image ({err}); replace or remove it") from None
    return image


def read_pair(image_path: Path, label_path: Path, num_classes: int, size: int,
              mapping: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An image [3,size,size] in [0,1] and its labels [size,size] uint8 (255 = ignore).

    ``mapping`` (256 entries) turns stored ids into train ids (Cityscapes labelIds).
    Both are resized to ``size`` x ``size`` (bilinear and nearest) so that a split fits in
    one tensor: this loader keeps data in memory, for small trees and subsets.
    """
    image = np.asarray(_open(image_path, "image").convert("RGB"))
    label_image = _open(label_path, "label map")
    if label_image.mode not in ("L", "P", "I", "I;16"):
        raise ConfigError(f"label map {label_path} has mode {label_image.mode}: expected one channel of class ids")
    labels = np.asarray(label_image).astype(np.int64)
    if labels.shape != image.shape[:2]:
        raise ConfigError(f"label map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its image "
                          f"{image_path} is {image.shape[1]}x{image.shape[0]}")
    if mapping is not None:
        if labels.max() > 255 or labels.min() < 0:
            raise ConfigError(f"label map {label_path} holds id {labels.max()}, outside 0..255")
        labels = mapping[labels]
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ConfigError(f"label map {label_path} holds class {int(labels[bad][0])}, outside 0..{num_classes - 1} "
                          f"(and {IGNORE} = ignore)")
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255)[None]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)[0]
    target = torch.from_numpy(labels).float()[None, None]
    target = F.interpolate(target, size=(size, size), mode="nearest")[0, 0].to(torch.uint8)
    return pixels, target


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list; an empty list is an error."""
    if not path.is_file():
        raise ConfigError(f"split list {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"split list {path} is empty: a split needs at least one image")
    return names
