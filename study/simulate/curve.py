"""What a learning curve is: its points, its config's name, and a param's place in its range.

Shared by the table (``table.py``) and the surrogate that predicts curves from it
(``surrogate.py``), which therefore need not import each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution


@dataclass(frozen=True)
class CurvePoint:
    iteration: int
    val: float
    test: float | None
    seconds: float  # the trial's time from the end of its start-up to the end of this evaluation


@dataclass(frozen=True)
class Curve:
    """One full-budget trial of the table."""

    key: str                 # "study/trial_id": unique, and the tie-breaker of ``nearest``
    config_id: str
    seed: int | None
    params: dict[str, Any]
    points: tuple[CurvePoint, ...]
    setup_s: float = 0.0     # its in-process start-up, taken out of ``points``' seconds

    @property
    def final(self) -> CurvePoint:
        return self.points[-1]

    @property
    def budget(self) -> int:
        return self.final.iteration


def config_id(params: str) -> str:
    """A configuration's name: the same sampled values give the same id, whatever the seed."""
    return hashlib.sha256(json.dumps(json.loads(params), sort_keys=True).encode()).hexdigest()[:12]


def unit(value: Any, dist: BaseDistribution) -> float:
    """A number's position in its distribution's range, 0 to 1 (on a log scale for a log range)."""
    low, high = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.0 if high == low else (float(value) - low) / (high - low)
