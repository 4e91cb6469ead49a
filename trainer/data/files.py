"""Reading images and label maps from disk, with errors that name the file.

A real dataset fails in the file, not in the trainer: a missing image, a corrupt PNG, a
label map of another size than its image, or a label value no class has. Each is a
``ConfigError`` naming the path, so ``semiseg-study`` says it in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def read_image(path: Path) -> torch.Tensor:
    """An RGB image [3,H,W] uint8, at its stored size."""
    array = np.asarray(_open(path, "image").convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_pair(image_path: Path, label_path: Path, num_classes: int,
              mapping: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An image [3,H,W] uint8 and its train-id labels [H,W] uint8 (255 = ignore), at their stored size.

    ``mapping`` (256 entries) turns stored ids into train ids (Cityscapes labelIds).
    """
    image = read_image(image_path)
    label_image = _open(label_path, "label map")
    if label_image.mode not in ("L", "P", "I", "I;16"):
        raise ConfigError(f"label map {label_path} has mode {label_image.mode}: expected one channel of class ids")
    labels = np.asarray(label_image).astype(np.int64)
    if labels.shape != image.shape[1:]:
        raise ConfigError(f"label map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its image "
                          f"{image_path} is {image.shape[2]}x{image.shape[1]}")
    if mapping is not None:
        if labels.max() > 255 or labels.min() < 0:
            raise ConfigError(f"label map {label_path} holds id {labels.max()}, outside 0..255")
        labels = mapping[labels]
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ConfigError(f"label map {label_path} holds class {int(labels[bad][0])}, outside 0..{num_classes - 1} "
                          f"(and {IGNORE} = ignore)")
    return image, torch.from_numpy(labels.astype(np.uint8))


def resize_image(image: torch.Tensor, height: int) -> torch.Tensor:
    """A uint8 image [3,H,W] resized (bilinear) to ``height`` rows, its aspect ratio kept."""
    width = max(1, round(image.shape[2] * height / image.shape[1]))
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map [H,W] resized to ``size`` by nearest neighbour (class ids are not blended)."""
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)


@dataclass(frozen=True)
class ImageFiles:
    """The (image, label map) files of one split and how to decode them.

    ``load(i)`` gives image ``i`` resized to ``resize_height`` rows (0: as stored) and its
    labels at the same size, or at their stored size with ``native_labels`` (evaluation
    scores every stored label pixel).
    """

    pairs: tuple[tuple[Path, Path], ...]
    num_classes: int
    mapping: np.ndarray | None = None
    resize_height: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def check_exist(self, labels: bool = True) -> None:
        """Fail now, naming the file, rather than hours into a run (label maps too, unless told not)."""
        for image, label in self.pairs:
            if not image.is_file():
                raise ConfigError(f"image {image} does not exist; check data_root and the split list")
            if labels and not label.is_file():
                raise ConfigError(f"label map {label} does not exist; check data_root and the split list")

    def _resized(self, image: torch.Tensor) -> torch.Tensor:
        if self.resize_height and self.resize_height != image.shape[1]:
            return resize_image(image, self.resize_height)
        return image

    def load_image(self, index: int) -> torch.Tensor:
        """Image ``index`` alone, resized: unlabeled images are never trained on their label maps."""
        return self._resized(read_image(self.pairs[index][0]))

    def load(self, index: int, native_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = read_pair(*self.pairs[index], self.num_classes, self.mapping)
        image = self._resized(image)
        if not native_labels and image.shape[1:] != labels.shape:
            labels = resize_labels(labels, tuple(image.shape[1:]))
        return image, labels


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list; an empty list is an error."""
    if not path.is_file():
        raise ConfigError(f"split list {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"split list {path} is empty: a split needs at least one image")
    return names
