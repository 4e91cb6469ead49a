"""The learning-curve table a simulation replays, and how a proposed config gets a curve from it.

The table is ``benchmarks/curves.py``'s (or a study's own, ``study_curves``): one row per
(study, trial, evaluation) with the trial's sampled params and their distributions. A
proposed config is "trained" by replaying a curve the table predicts for it
(``CurveTable.curve_for``), by one of two models:

* ``nearest`` (the table's default: a tabulated config replays exactly its own curve): the full
  curve of the nearest tabulated config (Euclidean distance in the unit cube of the space,
  categories 0 or 1);
* ``surrogate`` (what the benchmark and ``semiseg-study simulate`` use): a Gaussian process
  fitted on the table (``surrogate.py``), far better on configs the table does not hold.

``validate`` measures either on held-back configs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from optuna.distributions import BaseDistribution, CategoricalDistribution

from study.records import FINISHED, stored_distributions, stored_params
from study.rung_ranks import spearman
from study.simulate.curve import Curve, CurvePoint, config_id, unit
from study.simulate.surrogate import CurveSurrogate

if TYPE_CHECKING:
    from study.location import Location

__all__ = ["Curve", "CurvePoint", "CurveTable", "config_id", "curve_seconds", "distance", "measured_startup",
           "study_curves", "unit", "validate"]


def curve_seconds(time_total_s: Sequence[float], train_seconds: Sequence[float | None]) -> tuple[list[float], float]:
    """A trial's seconds at each evaluation with its start-up taken out, and that start-up.

    ``time_total_s`` (Tune's wall clock of the trial) holds the trial's start-up (model, data,
    optimiser) once and one evaluation per report; ``train_seconds`` holds neither. So the
    non-training time grows by one evaluation per report: its median step is the cost of an
    evaluation, and what the first report holds beyond one evaluation is the start-up. The
    simulator charges a study-wide ``startup_s`` instead (``measured_startup``).
    """
    if not time_total_s or any(t is None for t in train_seconds):
        return list(time_total_s), 0.0
    overhead = [total - train for total, train in zip(time_total_s, train_seconds)]
    steps = [b - a for a, b in itertools.pairwise(overhead)]
    evaluation = max(0.0, statistics.median(steps)) if steps else 0.0
    setup = min(max(0.0, overhead[0] - evaluation), time_total_s[0])
    return [t - setup for t in time_total_s], setup


class CurveTable:
    """The full-budget curves of a learning-curve table, and the distributions their params came from."""

    MODELS = ("nearest", "surrogate")

    def __init__(self, curves: Sequence[Curve], distributions: Mapping[str, BaseDistribution],
                 model: str = "nearest") -> None:
        if model not in self.MODELS:
            raise ValueError(f"model {model!r}: expected one of {', '.join(self.MODELS)}")
        if not curves:
            raise ValueError("the table holds no full-budget curve")
        budgets = {c.budget for c in curves}
        if len(budgets) > 1:
            raise ValueError(f"the full curves end at different iterations {sorted(budgets)}; "
                             "a simulation replays one budget: select one with a filtered table")
        self.curves = sorted(curves, key=lambda c: c.key)
        self.distributions = dict(distributions)
        self.budget = budgets.pop()
        self.model = model
        self._surrogate: Any = None  # fitted on first use

    def with_model(self, model: str) -> "CurveTable":
        """The same curves, replayed by another model."""
        return CurveTable(self.curves, self.distributions, model)

    def curve_for(self, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution] | None = None,
                  rng: Any = None) -> Curve:
        """The curve a simulated trial of ``params`` replays (``rng``: the surrogate's noise draw)."""
        if self.model == "nearest":
            return self.nearest(params, distributions)
        if self._surrogate is None:
            self._surrogate = CurveSurrogate(self.curves, self.distributions)
        return self._surrogate.curve(params, rng)

    @classmethod
    def load(cls, path: str | Path, model: str = "nearest") -> "CurveTable":
        return cls.from_arrow(pq.read_table(path), model)

    @classmethod
    def from_study(cls, folder: "str | Path | Location", model: str = "nearest") -> "CurveTable":
        """The full curves of one study's own trials (``semiseg-study simulate``)."""
        return cls.from_arrow(pa.Table.from_pylist(study_curves(folder)), model)

    @classmethod
    def from_arrow(cls, table: pa.Table, model: str = "nearest") -> "CurveTable":
        rows: dict[str, list[dict[str, Any]]] = {}
        for row in table.to_pylist():
            if row["full_budget"]:
                rows.setdefault(f"{row['study']}/{row['trial_id']}", []).append(row)
        distributions: dict[str, BaseDistribution] = {}
        curves = []
        for key, trial_rows in rows.items():
            trial_rows = list({r["iteration"]: r for r in sorted(trial_rows, key=lambda r: r["iteration"])}.values())
            seconds, setup = curve_seconds([r["time_total_s"] for r in trial_rows],
                                           [r.get("train_seconds") for r in trial_rows])
            points = tuple(CurvePoint(int(r["iteration"]), float(r["val_miou"]), r.get("test_miou"), s)
                           for r, s in zip(trial_rows, seconds))
            first = trial_rows[0]
            for name, dist in stored_distributions(first).items():
                distributions.setdefault(name, dist)
            curves.append(Curve(key, first["config_id"], first.get("seed"), stored_params(first), points, setup))
        return cls(curves, distributions, model)

    def nearest(self, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution] | None = None,
                *, exclude: Collection[str] = ()) -> Curve:
        """The curve whose params are nearest to ``params`` (``distance``); ties go to the lowest key.

        ``distributions`` (those ``params`` were sampled from) scale the distance, the table's
        fill in; ``exclude`` names config ids to pass over (leave-one-out).
        """
        scales = {**self.distributions, **(distributions or {})}
        candidates = [c for c in self.curves if c.config_id not in exclude]
        if not candidates:
            raise ValueError("no curve left to choose from")
        return min(candidates, key=lambda c: (distance(params, c.params, scales), c.key))


def study_curves(folder: "str | Path | Location") -> list[dict[str, Any]]:
    """The table's rows of one study: one per evaluation, with its trial's config and outcome.

    ``full_budget`` marks the trials that finished (ran to ``max_iters``); the others'
    rows are kept, since a growing table is committed while its study runs.
    """
    from study.location import as_location
    from study.spec import read_study_json
    from study.store import ResultStore

    folder = as_location(folder)
    spec = read_study_json(folder)
    store = ResultStore(folder, spec.name)
    trials = {t["trial_id"]: t for t in store.trials().to_pylist()}
    rows = []
    for r in sorted(store.reports().to_pylist(), key=lambda r: (r["trial_id"], r["iteration"])):
        t = trials.get(r["trial_id"])
        if t is None or not t.get("params"):
            continue
        rows.append({
            "study": spec.name, "trial_id": r["trial_id"], "config_id": config_id(t["params"]),
            "seed": r["config.seed"], "status": t["status"], "full_budget": t["status"] == FINISHED,
            "iteration": r["iteration"], "val_miou": r["val_miou"], "test_miou": r["test_miou"],
            "train_seconds": r["train_seconds"], "time_total_s": r["time_total_s"],
            "params": t["params"], "distributions": t["distributions"],
        })
    return rows


def param_distance(a: Any, b: Any, dist: BaseDistribution | None) -> float:
    """0 to 1: the gap of two numbers within their range; categories (or a param without a range) differ by 1."""
    if dist is None or isinstance(dist, CategoricalDistribution):
        return 0.0 if a == b else 1.0
    return abs(unit(a, dist) - unit(b, dist))


def distance(p: Mapping[str, Any], q: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> float:
    """Euclidean distance in the unit cube; a param only one side has (conditional) counts 1."""
    total = 0.0
    for name in set(p) | set(q):
        gap = param_distance(p[name], q[name], distributions.get(name)) if name in p and name in q else 1.0
        total += gap * gap
    return math.sqrt(total)


def validate(table: CurveTable, model: str | None = None) -> dict[str, Any]:
    """How well ``model`` (the table's by default) predicts a config's final val mIoU from the others
    (leave one config out; the surrogate is fitted again without it).

    Both seeds of a config are left out together, else a config's twin would predict it and
    the error would only be the seed noise, reported beside it for comparison ("seed_noise":
    the mean absolute difference of final val between two seeds of one config). "mae_of_mean"
    is the error of predicting every config by the mean of the others: the bar to beat.
    """
    model = model or table.model
    truths, predictions, baselines = [], [], []
    for curve in table.curves:
        others = [c for c in table.curves if c.config_id != curve.config_id]
        if model == "nearest":
            predictions.append(table.nearest(curve.params, exclude={curve.config_id}).final.val)
        else:
            predictions.append(float(CurveSurrogate(others, table.distributions).scores(curve.params)[0][-1]))
        truths.append(curve.final.val)
        baselines.append(abs(statistics.fmean(c.final.val for c in others) - curve.final.val))
    seeds: dict[str, list[float]] = {}
    for curve in table.curves:
        seeds.setdefault(curve.config_id, []).append(curve.final.val)
    pairs = [abs(a - b) for vals in seeds.values() for a, b in itertools.combinations(vals, 2)]
    return {
        "model": model,
        "curves": len(truths),
        "mae": statistics.fmean(abs(p - t) for p, t in zip(predictions, truths)),
        "spearman": spearman(predictions, truths),
        "mae_of_mean": statistics.fmean(baselines),
        "seed_pairs": len(pairs),
        "seed_noise": statistics.fmean(pairs) if pairs else None,
    }



def measured_startup(study_folder: "str | Path | Location") -> float:
    """The median per-trial start-up overhead of a study, in seconds, from its Parquet store.

    Per trial: the driver's ``started`` timestamp to the driver's receipt of the first report,
    less the training before that report (its ``train_seconds``) and one evaluation. That
    counts what a trial spends before it trains (Ray starting or reusing the actor, building
    the model and data, the trial's first checkpoint) and the driver's own lag, which
    ``time_total_s`` alone would miss. An evaluation's cost is the study-wide median growth
    of ``time_total_s - train_seconds`` from one report to the next. The median over trials
    keeps a trial that waited on a busy machine from setting the figure.
    """
    from study.location import as_location
    from study.store import ResultStore

    folder = as_location(study_folder)
    store = ResultStore(folder, folder.name)
    started = {t["trial_id"]: t["started"] for t in store.trials().to_pylist() if t["started"] is not None}
    reports: dict[str, list[dict[str, Any]]] = {}
    for r in store.reports().to_pylist():
        if r["train_seconds"] is not None and r["time_total_s"] is not None and r["timestamp"] is not None:
            reports.setdefault(r["trial_id"], []).append(r)
    steps = []
    for rows in reports.values():
        rows.sort(key=lambda r: r["iteration"])
        overhead = [r["time_total_s"] - r["train_seconds"] for r in rows]
        steps += [b - a for a, b in itertools.pairwise(overhead)]
    evaluation = max(0.0, statistics.median(steps)) if steps else 0.0
    estimates = [max(0.0, (rows[0]["timestamp"] - started[tid]).total_seconds() - rows[0]["train_seconds"]
                     - evaluation)
                 for tid, rows in reports.items() if tid in started]
    if not estimates:
        raise ValueError(f"{folder}: no trial with a start time and a report; nothing to measure")
    return statistics.median(estimates)


