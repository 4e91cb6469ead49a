"""A study as the report sees it: its Parquet tables as plain rows, nothing else.

The report reads only ``results/`` (and ``retrain/`` and ``ablate/`` when present), so a study folder
copied off a cluster can be reported on a laptop without Ray, the space file or the
Optuna database.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution

from study.location import Location, as_location
from study.records import stored_distributions
from study.ranking import ranked_study, ranked_trials
from study.store import ResultStore, StoreError
from trainer.classes import CLASSES


def esc(text: Any) -> str:
    """User text (names, errors, paths) made inert for HTML and for Plotly's HTML-like labels."""
    return html.escape(str(text), quote=True)


@dataclass
class StudyData:
    name: str
    folder: Location
    trials: list[dict[str, Any]]
    reports: list[dict[str, Any]]                     # sorted by (trial_id, iteration)
    params: dict[str, BaseDistribution]               # every param any trial sampled
    retrain: list[dict[str, Any]] = field(default_factory=list)
    ablate: list[dict[str, Any]] = field(default_factory=list)
    grace: int | None = None                          # ASHA's first rung, where study.json says ASHA ran

    @property
    def ranked(self) -> list[dict[str, Any]]:
        return ranked_trials(self.trials)

    def reports_of(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["trial_id"] == trial_id]

    def start(self) -> dt.datetime | None:
        """When the first trial started: time zero of the timeline and the best-so-far curve."""
        times = [t["started"] for t in self.trials if t.get("started")] or \
                [r["timestamp"] - dt.timedelta(seconds=r["time_total_s"] or 0) for r in self.reports]
        return min(times) if times else None

    def class_names(self) -> list[str]:
        dataset = self.trials[0].get("config.dataset") if self.trials else None
        width = max((len(r["iou"] or []) for r in self.reports), default=0)
        names = list(CLASSES.get(str(dataset), ()))
        return names[:width] if len(names) >= width else [f"class {i}" for i in range(width)]


def load_study(folder: "Location | Path", require_scores: bool = True) -> StudyData:
    """Read a study folder; raise NoFinishedTrialError if no trial has an evaluation yet."""
    folder = as_location(folder)
    if not (folder / "results").is_dir():
        raise StoreError(f"{folder} is not a study folder (no results/ in it); give the study's name and "
                         f"--dir, e.g. `semiseg-study report NAME --dir studies`")
    store = ResultStore(folder, folder.name)
    trials = store.trials().to_pylist()
    if require_scores:
        ranked_study(folder, rows=trials, what_for=": nothing to report yet")
    reports = sorted(store.reports().to_pylist(), key=lambda r: (r["trial_id"], r["iteration"]))
    params: dict[str, BaseDistribution] = {}
    for row in trials:
        for name, dist in stored_distributions(row).items():
            params.setdefault(name, dist)
    return StudyData(folder.name, folder, trials, reports, params, store.retrain().to_pylist(),
                     store.ablate().to_pylist(), _grace(folder))


def _grace(folder: Path) -> int | None:
    """The study's grace period from its study.json; None without one (a copied results/ alone) or without ASHA."""
    try:
        spec = json.loads((folder / "study.json").read_text())["spec"]
    except (OSError, ValueError, KeyError):
        return None
    return int(spec["grace"]) if spec.get("scheduler") == "asha" and spec.get("grace") else None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
