"""Streams of training batches, each one resumable from a checkpoint.

The trainer takes its labeled and unlabeled batches from streams (``next()``), and saves
each stream's ``state_dict()`` in its checkpoint:

* ``GeneratorStream``: an in-memory split drawn with the trainer's generator (digits);
  the generator's state, saved by the trainer, is the stream's state.
* ``SeededStream``: batch k is drawn with a generator seeded by (key, k), so it does not
  depend on what came before. Worker processes can therefore decode batches ahead of the
  trainer (``workers`` > 0, a ``torch.utils.data.DataLoader``) without advancing any shared
  state, and a resume needs only k. ``workers`` = 0 draws the same batches in the process.
* ``AlternatingStream``: source and target batches in turn (domain adaptation).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Iterator, Protocol

import torch

from trainer.config import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchStream(Protocol):
    def next(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Sampleable(Protocol):
    def __len__(self) -> int: ...
    def sample(self, batch: int, generator: torch.Generator) -> Batch: ...


class GeneratorStream:
    def __init__(self, split: Sampleable, batch: int, generator: torch.Generator) -> None:
        self.split, self.batch, self.generator = split, batch, generator

    def next(self) -> Batch:
        return self.split.sample(self.batch, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def batch_seed(key: str, k: int) -> int:
    """A 63-bit seed for batch ``k`` of stream ``key``, the same on every machine."""
    digest = hashlib.blake2b(f"{key}#{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Failed:
    """A ``ConfigError`` met in a worker process, sent back as data (the DataLoader would
    re-raise it wrapped in a multi-line traceback, losing the one line that names the file)."""

    def __init__(self, message: str) -> None:
        self.message = message


class _SeededBatches(torch.utils.data.Dataset):
    def __init__(self, pool: Sampleable, batch: int, key: str) -> None:
        self.pool, self.batch, self.key = pool, batch, key

    def __getitem__(self, k: int) -> Batch:
        return self.pool.sample(self.batch, torch.Generator().manual_seed(batch_seed(self.key, k)))


def _raise_failures(items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, _Failed):
            raise ConfigError(item.message)
        yield item


class SeededStream:
    def __init__(self, pool: Sampleable, batch: int, key: str, workers: int = 0, pin_memory: bool = False) -> None:
        self._batches = _SeededBatches(pool, batch, key)
        self.workers, self.pin_memory = workers, pin_memory
        self.drawn = 0
        self._ahead: Iterator[Batch] | None = None

    def next(self) -> Batch:
        if not self.workers:
            images, labels = self._batches[self.drawn]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
        else:
            if self._ahead is None:
                self._ahead = load_in_workers(self._batches, self.workers, self.pin_memory,
                                              order=itertools.count(self.drawn))
            images, labels = next(self._ahead)
        self.drawn += 1
        return images, labels

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()  # batches decoded ahead belong to the old position
        self.drawn = int(state["drawn"])

    def close(self) -> None:
        """Stop the worker processes (a later ``next()`` starts them again where the stream is)."""
        self._ahead = None


class AlternatingStream:
    """Source and target batches in turn, all run long; ``last_is_target`` says which came last
    (the memory bank is filled from the target domain only)."""

    def __init__(self, source: BatchStream, target: BatchStream) -> None:
        self.source, self.target = source, target
        self.calls = 0

    @property
    def last_is_target(self) -> bool:
        return self.calls % 2 == 0  # calls 1, 3, ... were source batches; before any call: True

    def next(self) -> Batch:
        self.calls += 1
        return (self.target if self.last_is_target else self.source).next()

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "source": self.source.state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.source.load_state_dict(state["source"])
        self.target.load_state_dict(state["target"])

    def close(self) -> None:
        self.source.close()
        self.target.close()


def load_in_workers(dataset: torch.utils.data.Dataset, workers: int, pin_memory: bool,
                    order: Iterator[int] | None = None) -> Iterator[Any]:
    """The items of ``dataset`` (all, or those ``order`` names) in order, decoded ahead by
    ``workers`` processes; a ``ConfigError`` in a worker is raised here with its own message."""
    loader = torch.utils.data.DataLoader(_Guarded(dataset), batch_size=None, sampler=order, num_workers=workers,
                                         pin_memory=pin_memory, prefetch_factor=2)
    return _raise_failures(iter(loader))


class _Guarded(torch.utils.data.Dataset):
    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except ConfigError as err:
            return _Failed(str(err))
