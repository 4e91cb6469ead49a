"""The images of a real dataset as the trainer uses them: random crops to train, full images to score.

Images vary in size (VOC) or are large (Cityscapes), so neither pool resizes them to a
square. ``CropPool`` hands out random ``size`` x ``size`` crops at the stored resolution
(padded with the mean colour and the ignore label where an image is smaller), and zoom,
shift and flips then run on the training device, in batch (``trainer.data.augment``).
``FullImages`` yields whole images with their labels at the stored resolution: the
evaluation scores every labeled pixel, as the paper does.

Both hand out uint8 images and labels (a quarter and an eighth of the bytes of float and
long) and both either decode every image once into memory (``workers`` = 0: small trees,
subsets) or read from disk as they go, in ``workers`` processes (``trainer.data.stream``).
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

import torch

from trainer.data.files import IGNORE, ImageFiles
from trainer.data.stream import SeededStream, load_in_workers
from trainer.models import IMAGE_MEAN

# The padding colour: the mean, which the network's normalisation turns into zeros.
PAD_COLOUR = torch.tensor([round(255 * m) for m in IMAGE_MEAN], dtype=torch.uint8)

Item = TypeVar("Item")


def _decode_once(files: ImageFiles, workers: int, load: Callable[[int], Item], labels: bool = True
                 ) -> list[Item] | None:
    """``workers`` = 0: every item decoded into memory now. Else None, once the files are
    known to exist (the worker processes decode them as they go)."""
    if workers:
        files.check_exist(labels)
        return None
    return [load(i) for i in range(len(files))]


class CropPool:
    """Training images of a real dataset, sampled as random square crops.

    A labeled pool crops the label maps with the images. An unlabeled pool (``labeled``
    False) never reads them: its "labels" only mark the padding (255) against the image (0),
    so that the trainer can keep pseudo-labels off the padding without seeing a label.
    """

    def __init__(self, files: ImageFiles, size: int, workers: int = 0, pin_memory: bool = False,
                 labeled: bool = True) -> None:
        self.files, self.size, self.workers, self.pin_memory = files, size, workers, pin_memory
        self.labeled = labeled
        self._memory = _decode_once(files, workers, self._load, labeled)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.labeled:
            return self.files.load(index)
        return self.files.load_image(index), None

    def _image(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._memory[index] if self._memory is not None else self._load(index)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` random crops: images [B,3,S,S] and labels [B,S,S] (255 on padding), both uint8."""
        index = torch.randint(len(self), (batch,), generator=generator).tolist()
        corners = torch.rand(batch, 2, generator=generator).tolist()
        s = self.size
        images = PAD_COLOUR[None, :, None, None].repeat(batch, 1, s, s)
        labels = torch.full((batch, s, s), IGNORE, dtype=torch.uint8)
        for slot, (i, (u, v)) in enumerate(zip(index, corners)):
            image, label = self._image(i)
            height, width = image.shape[1:]
            top, left = int(u * (max(height - s, 0) + 1)), int(v * (max(width - s, 0) + 1))
            crop = image[:, top:top + s, left:left + s]
            h, w = crop.shape[1:]
            images[slot, :, :h, :w] = crop
            labels[slot, :h, :w] = 0 if label is None else label[top:top + s, left:left + s]
        return images, labels

    def stream(self, batch: int, *, generator: torch.Generator, key: str) -> SeededStream:
        """Batch k of the stream is ``sample`` on a generator seeded by (``key``, k): worker
        processes can decode ahead, and a resume needs only k."""
        del generator  # the trainer's generator is for in-memory splits; this stream seeds each batch
        return SeededStream(self, batch, key, self.workers, self.pin_memory)


class FullImages:
    """Val or test images at their stored resolution, for ``Trainer.evaluate``."""

    def __init__(self, files: ImageFiles, workers: int = 0, pin_memory: bool = False) -> None:
        self.files, self.workers, self.pin_memory = files, workers, pin_memory
        self._memory = _decode_once(files, workers, self.__getitem__)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.files.load(index, native_labels=True)

    def batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``batch`` consecutive images of one size per batch (1 when sizes vary, as in VOC)."""
        items = iter(self._memory) if self._memory is not None else load_in_workers(
            self, self.workers, self.pin_memory)
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        for image, labels in items:
            if group and (len(group) == batch or group[0][0].shape != image.shape
                          or group[0][1].shape != labels.shape):
                yield _stack(group)
                group = []
            group.append((image, labels))
        if group:
            yield _stack(group)


def _stack(group: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
