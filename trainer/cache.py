"""The on-disk cache for things that are slow to make and never change: generated scenes,
pretrained weights. Files are written atomically, so trials that start together can race."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch

from trainer.atomic import atomic_write


def cache_dir() -> Path:
    """``$SEMISEG_CACHE`` or ``~/.cache/semiseg-study``."""
    return Path(os.environ.get("SEMISEG_CACHE", Path.home() / ".cache" / "semiseg-study"))


def inductor_cache_dir() -> Path:
    """Where ``compile=true`` keeps Inductor's kernels: one folder per host under the cache.

    Per host, not per cache: ``$SEMISEG_CACHE`` may be a home folder shared by a cluster's
    nodes, and Inductor's CPU kernels are built for the CPU that compiled them (-march=native)
    with no CPU in their cache key, so a kernel from another node's CPU could be loaded and fail."""
    return cache_dir() / "inductor" / socket.gethostname()


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def cached_tensors(name: str, make: Callable[[], Any]) -> Any:
    """Load ``name`` from the cache, or ``make()`` it and store it (tensors, dicts, tuples)."""
    path = cache_dir() / name
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            pass  # a damaged file is made again below
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        torch.save(value, handle)
    return value
