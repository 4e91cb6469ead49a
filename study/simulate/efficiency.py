"""What a method costs to find a top config: repeats of a simulated study, summed up.

The target is a val mIoU only the best configs of the table reach (``target_val``: the 95th
percentile of the table's final val mIoU). Per repeat: the compute (the sum of the trials'
seconds) and the wall time at which the best val so far first reaches it, and the test mIoU
of the config the study selects on val at its end. A repeat that never reaches it counts as
infinitely expensive, so a median is finite only where most repeats reach the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from search_spaces import SearchSpace
from study.simulate.methods import METHODS, Method, run_method
from study.simulate.replay import _EPS, SimResult
from study.simulate.table import CurveTable, measured_startup, validate

TARGET_QUANTILE = 0.95


def target_val(table: CurveTable, quantile: float = TARGET_QUANTILE) -> float:
    """The val mIoU a top config reaches: a quantile of the table's final val mIoU over its curves."""
    return float(np.quantile([c.final.val for c in table.curves], quantile))


def reached_at(result: SimResult, target: float) -> tuple[float, float] | None:
    """(compute s, wall s) when the best val so far first reached ``target``; None if it never did."""
    point = next((p for p in result.anytime if p.val >= target), None)
    return None if point is None else (point.compute_s, point.wall_s)


def repeat(method: str | Method, table: CurveTable, *, repeats: int, workers: int, startup_s: float,
           budget_s: float | None = None, samples: int | None = None, space: SearchSpace | None = None,
           first_seed: int = 0, progress: Any = None) -> list[SimResult]:
    """``repeats`` simulated studies of one method, seeds ``first_seed``, ``first_seed + 1``, ..."""
    results = []
    for seed in range(first_seed, first_seed + repeats):
        results.append(run_method(method, table, workers=workers, startup_s=startup_s, seed=seed, samples=samples,
                                  budget_s=budget_s, space=space))
        if progress is not None:
            progress.update(1)
    return results


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """25th, 50th, 75th percentile (inf where more than that share is inf; NaN for no values)."""
    if not values:
        return (math.nan,) * 3
    q = np.quantile(np.asarray(values, dtype=float), [0.25, 0.5, 0.75], method="lower")
    return float(q[0]), float(q[1]), float(q[2])


@dataclass(frozen=True)
class Summary:
    method: str
    workers: int
    repeats: int
    reached: float                          # share of repeats whose best val reached the target
    compute_s: tuple[float, float, float]   # quartiles of the compute to the target
    wall_s: tuple[float, float, float]      # quartiles of the wall time to the target
    selected_test: tuple[float, float, float]
    trials: float                           # median trials started per repeat

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "workers": self.workers, "repeats": self.repeats, "reached": self.reached,
                **{f"compute_{q}": v for q, v in zip(("q1", "median", "q3"), self.compute_s)},
                **{f"wall_{q}": v for q, v in zip(("q1", "median", "q3"), self.wall_s)},
                **{f"selected_test_{q}": v for q, v in zip(("q1", "median", "q3"), self.selected_test)},
                "trials": self.trials}


def summarize(method: str, results: Sequence[SimResult], target: float) -> Summary:
    if not results:
        raise ValueError(f"{method}: no repeats to summarise")
    hits = [reached_at(r, target) for r in results]
    tests = [r.selected_test for r in results if r.selected_test is not None]
    return Summary(method, results[0].workers, len(results), sum(h is not None for h in hits) / len(hits),
                   quartiles([h[0] if h else math.inf for h in hits]),
                   quartiles([h[1] if h else math.inf for h in hits]), quartiles(tests),
                   float(np.median([len(r.trials) for r in results])))


def anytime_band(results: Sequence[SimResult], grid: Sequence[float], axis: str = "compute") -> np.ndarray:
    """Best val so far at each point of ``grid``, per repeat (rows); NaN before a repeat's first evaluation.

    ``axis``: what the grid counts, "compute" (seconds of trial time, start-ups included) or
    "iterations" (every trial's last evaluated iteration, summed)."""
    band = np.full((len(results), len(grid)), np.nan)
    for i, result in enumerate(results):
        xs = [p.iterations_spent if axis == "iterations" else p.compute_s for p in result.anytime]
        band[i] = step_at(xs, [p.val for p in result.anytime], grid)
    return band


def step_at(xs: Sequence[float], ys: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """The step function through (xs, ys), xs ascending, at each point of ``grid``; NaN before the first x."""
    if not len(xs):
        return np.full(len(grid), np.nan)
    index = np.searchsorted(np.asarray(xs, dtype=float), np.asarray(grid, dtype=float) + _EPS, side="right") - 1
    out = np.asarray(ys, dtype=float)[np.clip(index, 0, None)]
    out[index < 0] = np.nan
    return out


def format_seconds(value: float) -> str:
    if math.isinf(value):
        return "never"
    if math.isnan(value):
        return "-"
    return f"{value / 3600:.1f} h" if value >= 3600 else f"{value / 60:.0f} min" if value >= 60 else f"{value:.0f} s"


def format_summaries(summaries: Sequence[Summary], target: float) -> str:
    """The benchmark's and ``simulate``'s table: one line per (method, workers)."""
    header = (f"target: val mIoU >= {target * 100:.1f} (the table's {TARGET_QUANTILE:.0%} quantile of final val)\n"
              f"{'method':<16}{'workers':>8}{'reached':>9}  {'compute to target (q1 / median / q3)':<36}"
              f"{'wall to target (median)':>24}{'selected test mIoU (median [q1, q3])':>38}{'trials':>8}")
    lines = [header]
    for s in summaries:
        compute = " / ".join(format_seconds(v) for v in s.compute_s)
        test = (f"{s.selected_test[1] * 100:.1f} [{s.selected_test[0] * 100:.1f}, {s.selected_test[2] * 100:.1f}]"
                if not math.isnan(s.selected_test[1]) else "-")
        lines.append(f"{s.method:<16}{s.workers:>8}{s.reached:>9.0%}  {compute:<36}{format_seconds(s.wall_s[1]):>24}"
                     f"{test:>38}{s.trials:>8.0f}")
    return "\n".join(lines)


MIN_CURVES = 5  # fewer full curves than this replay too coarse a picture of the space


@dataclass(frozen=True)
class StudySimulation:
    """``semiseg-study simulate``'s answer: the method and random + FIFO on one study's own curves."""

    summaries: list[Summary]
    target: float
    curves: int
    startup_s: float
    budget_s: float
    fidelity: dict[str, Any]  # ``validate``: how faithful the replay of a new config is


def simulate_study(folder: str | Path, method: Method, *, workers: int, repeats: int, samples: int,
                   progress: bool = False, model: str = "surrogate") -> StudySimulation:
    """Replay ``method`` and random + FIFO ``repeats`` times each on the study's full-budget curves.

    Both get the same compute: what ``samples`` full trials of the study cost on average, so a
    method that stops trials early tries more configs within it.
    """
    from study.location import as_location
    from study.spec import read_study_json
    from trainer.config import ConfigError

    folder = as_location(folder)
    spec = read_study_json(folder)
    try:
        table = CurveTable.from_study(folder, model)
    except ValueError as err:
        raise ConfigError(f"study {spec.name!r}: {err}; a simulation replays trials that ran to the end "
                          f"(--scheduler fifo runs every trial to the end)") from None
    if len(table.curves) < MIN_CURVES:
        raise ConfigError(f"study {spec.name!r} has {len(table.curves)} trials that ran the full budget; a simulation "
                          f"needs at least {MIN_CURVES}: resume it or run one with --scheduler fifo")
    for name, value in (("--workers", workers), ("--repeats", repeats), ("--samples", samples)):
        if value < 1:
            raise ConfigError(f"{name} {value}: must be at least 1")
    startup = measured_startup(folder)
    budget = samples * (startup + float(np.mean([c.final.seconds for c in table.curves])))
    space = spec.search_space
    baseline = METHODS["random+fifo"]
    methods = [method] if method.name == baseline.name else [method, baseline]
    target = target_val(table)
    summaries = []
    with tqdm(total=repeats * len(methods), desc="simulated studies", unit="study", disable=not progress) as bar:
        for m in methods:
            results = repeat(m, table, repeats=repeats, workers=workers, startup_s=startup, budget_s=budget,
                             space=space, progress=bar)
            summaries.append(summarize(m.name, results, target))
    return StudySimulation(summaries, target, len(table.curves), startup, budget, validate(table))
