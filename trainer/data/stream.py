"""A split read from disk batch by batch, decoded by a pool of threads.

For datasets too large to hold in memory. Which images a batch holds still comes from the
trainer's generator, so a checkpoint resumes the same stream; the pool only decodes them
(Pillow releases the GIL while it decodes, so threads run in parallel). On a GPU the batch
lands in pinned memory, so the copy to the device can overlap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from trainer.config import ConfigError
from trainer.data.files import read_pair


class FileSplit:
    def __init__(self, pairs: Sequence[tuple[Path, Path]], num_classes: int, size: int,
                 mapping: np.ndarray | None, workers: int, pin_memory: bool = False) -> None:
        for image, label in pairs:  # fail now, naming the file, not hours into a run
            for path, what in ((image, "image"), (label, "label map")):
                if not path.is_file():
                    raise ConfigError(f"{what} {path} does not exist; check data_root and the split list")
        self.pairs, self.num_classes, self.size, self.mapping = list(pairs), num_classes, size, mapping
        self.pin_memory = pin_memory
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = list(self._pool.map(
            lambda i: read_pair(*self.pairs[i], self.num_classes, self.size, self.mapping), indices))
        images, labels = torch.stack([p[0] for p in loaded]), torch.stack([p[1] for p in loaded])
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self), (batch,), generator=generator)
        images, labels = self._load(index.tolist())
        return images, labels.long()

    def batches(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch):
            images, labels = self._load(range(start, min(start + batch, len(self))))
            yield images, labels.long()
