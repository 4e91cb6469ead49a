"""Search efficiency without training (issue 13): replay search methods on a learning-curve table.

A method is a searcher and a scheduler, the very objects a study builds (``StudySearcher``
on an Optuna sampler, ``PersistentASHA`` or Ray's ``FIFOScheduler``), driven through Ray's
interfaces by a simulated clock instead of Ray Tune. A proposed config is "trained" by
replaying the tabulated full curve nearest to it (``CurveTable.nearest``); the table is
``benchmarks/curves.py``'s, one row per (study, trial, evaluation).

    table = CurveTable.load("benchmarks/data/digits_curves.parquet")
    print(validate_nearest(table))          # is the nearest curve a fair stand-in?
    result = run_method("tpe+asha", table, workers=4, samples=60, startup_s=1.0, seed=0)
    result.selected_test, result.incumbent(compute_s=3600)

The clock: N workers; a free worker takes the next suggestion; a trial costs ``startup_s``,
then the tabulated seconds between its evaluations; the scheduler decides at each evaluation,
in simulated-time order (a heap of events). A study ends after ``samples`` trials, or when the
compute spent (the sum of the trials' seconds, start-up included) reaches ``budget_s``.

What it cannot show: the table holds finished, non-diverged runs only, so a region of the
space where training diverges is replayed by its nearest healthy neighbour; and the table's
trials also scored the test split at every evaluation (``eval_test``), so its evaluations cost
a little more than a study's.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import statistics
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
from optuna.distributions import BaseDistribution, CategoricalDistribution, json_to_distribution
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SearchSpace, get_space
from search_spaces.space import quiet_optuna
from study import ray_internals as internals
from study.search import METRIC, TIME_ATTR, PersistentASHA, make_sampler, make_searcher

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP
RUNNING, PAUSED, FINISHED, STOPPED, CUT = "running", "paused", "finished", "stopped", "cut"
_EPS = 1e-9


# --- the table ----------------------------------------------------------------------------

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

    def __init__(self, curves: Sequence[Curve], distributions: Mapping[str, BaseDistribution]) -> None:
        if not curves:
            raise ValueError("the table holds no full-budget curve")
        budgets = {c.budget for c in curves}
        if len(budgets) > 1:
            raise ValueError(f"the full curves end at different iterations {sorted(budgets)}; "
                             "a simulation replays one budget: select one with a filtered table")
        self.curves = sorted(curves, key=lambda c: c.key)
        self.distributions = dict(distributions)
        self.budget = budgets.pop()

    @classmethod
    def load(cls, path: str | Path) -> "CurveTable":
        return cls.from_arrow(pq.read_table(path))

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "CurveTable":
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
            for name, dist in json.loads(first["distributions"] or "{}").items():
                distributions.setdefault(name, json_to_distribution(json.dumps(dist)))
            curves.append(Curve(key, first["config_id"], first.get("seed"), json.loads(first["params"]), points, setup))
        return cls(curves, distributions)

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


def unit(value: Any, dist: BaseDistribution) -> float:
    """A number's position in its distribution's range, 0 to 1 (on a log scale for a log range)."""
    low, high = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.0 if high == low else (float(value) - low) / (high - low)


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


def validate_nearest(table: CurveTable) -> dict[str, Any]:
    """How well the nearest other config's curve predicts a config's final val mIoU (leave one config out).

    Both seeds of a config are left out together, else a config's twin would predict it and
    the error would only be the seed noise, reported beside it for comparison ("seed_noise":
    the mean absolute difference of final val between two seeds of one config). "mae_of_mean"
    is the error of predicting every config by the mean of the others: the bar to beat.
    """
    truths, predictions, baselines, gaps = [], [], [], []
    for curve in table.curves:
        neighbour = table.nearest(curve.params, exclude={curve.config_id})
        others = [c.final.val for c in table.curves if c.config_id != curve.config_id]
        truths.append(curve.final.val)
        predictions.append(neighbour.final.val)
        baselines.append(abs(statistics.fmean(others) - curve.final.val))
        gaps.append(distance(curve.params, neighbour.params, table.distributions))
    seeds: dict[str, list[float]] = {}
    for curve in table.curves:
        seeds.setdefault(curve.config_id, []).append(curve.final.val)
    pairs = [abs(a - b) for vals in seeds.values() for a, b in itertools.combinations(vals, 2)]
    return {
        "curves": len(truths),
        "mae": statistics.fmean(abs(p - t) for p, t in zip(predictions, truths)),
        "spearman": spearman(predictions, truths),
        "mae_of_mean": statistics.fmean(baselines),
        "mean_distance": statistics.fmean(gaps),
        "seed_pairs": len(pairs),
        "seed_noise": statistics.fmean(pairs) if pairs else None,
    }


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (NaN when either side is constant or too short)."""
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


# --- start-up, measured ---------------------------------------------------------------------

def measured_startup(study_folder: str | Path) -> float:
    """The median per-trial start-up overhead of a study, in seconds, from its Parquet store.

    Per trial: the driver's ``started`` timestamp to the driver's receipt of the first report,
    less the training before that report (its ``train_seconds``) and one evaluation. That
    counts what a trial spends before it trains (Ray starting or reusing the actor, building
    the model and data, the trial's first checkpoint) and the driver's own lag, which
    ``time_total_s`` alone would miss. An evaluation's cost is the study-wide median growth
    of ``time_total_s - train_seconds`` from one report to the next. The median over trials
    keeps a trial that waited on a busy machine from setting the figure.
    """
    from study.store import ResultStore

    folder = Path(study_folder)
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


# --- the simulation -------------------------------------------------------------------------

@dataclass
class TuneTrial:
    """What a scheduler sees of a trial (Ray's schedulers read ``trial_id`` only)."""

    trial_id: str
    config: dict[str, Any]


@dataclass
class TrialRecord:
    """One simulated trial, as it ended (``status``: finished, stopped, or cut by the budget)."""

    trial_id: str
    config: dict[str, Any]
    params: dict[str, Any]
    curve: Curve
    start_s: float
    end_s: float | None = None
    compute_s: float = 0.0       # seconds on a worker, each start-up included
    iterations: int = 0          # the last evaluation reached
    last_val: float | None = None
    status: str = RUNNING
    starts: int = 1              # 1, plus one per resume of a paused trial (each pays the start-up)
    next_point: int = field(default=0, repr=False)
    segment_start: float = field(default=0.0, repr=False)
    last_result: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def tune(self) -> TuneTrial:
        return TuneTrial(self.trial_id, self.config)


@dataclass(frozen=True)
class AnytimePoint:
    """The best val mIoU of any evaluation so far, when it was reached."""

    wall_s: float
    compute_s: float
    val: float
    test: float | None       # the tabulated test mIoU of that evaluation
    trial_id: str
    iteration: int


@dataclass
class SimResult:
    trials: list[TrialRecord]
    anytime: list[AnytimePoint]   # a step function: a point per improvement, lasting to the next
    selected: TrialRecord | None  # best final val among full-budget trials, else best last val of any
    wall_s: float
    compute_s: float
    workers: int
    startup_s: float

    @property
    def selected_val(self) -> float | None:
        return None if self.selected is None else self.selected.last_val

    @property
    def selected_test(self) -> float | None:
        """The tabulated final test mIoU of the selected config (what training it to the end gives)."""
        return None if self.selected is None else self.selected.curve.final.test

    def incumbent(self, *, compute_s: float | None = None, wall_s: float | None = None) -> AnytimePoint | None:
        """The best evaluation reached by that much compute (or wall time); None before the first."""
        reached = [p for p in self.anytime if (compute_s is None or p.compute_s <= compute_s + _EPS)
                   and (wall_s is None or p.wall_s <= wall_s + _EPS)]
        return reached[-1] if reached else None


def simulate(table: CurveTable, searcher: Searcher, scheduler: TrialScheduler, workers: int, *,
             startup_s: float, seed: int, samples: int | None = None, budget_s: float | None = None) -> SimResult:
    """Replay one study of ``searcher`` and ``scheduler`` on ``table`` with ``workers`` workers.

    ``seed`` seeds numpy's global generator for the run (restored after): Ray's ASHA draws
    each trial's bracket from it. The searcher's sampler carries its own seed.
    """
    if samples is None and budget_s is None:
        raise ValueError("give samples, budget_s or both: a study needs an end")
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with quiet_optuna(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Ray times the define-by-run call, sampler included: a GP sampler's fit is not a slow space.
            warnings.filterwarnings("ignore", message="Define-by-run function passed", category=UserWarning)
            return _Replay(table, searcher, scheduler, workers, startup_s, samples, budget_s).run()
    finally:
        np.random.set_state(state)


class _Replay:
    """The event loop of ``simulate``: one pending event (its next evaluation) per running trial."""

    def __init__(self, table: CurveTable, searcher: Searcher, scheduler: TrialScheduler, workers: int,
                 startup_s: float, samples: int | None, budget_s: float | None) -> None:
        self.table, self.searcher, self.scheduler = table, searcher, scheduler
        self.workers, self.startup_s, self.samples, self.budget_s = workers, startup_s, samples, budget_s
        self.clock = self.compute = 0.0
        self.busy = 0
        self.events: list[tuple[float, int, str]] = []
        self.order = itertools.count()  # equal times: the event pushed first goes first
        self.trials: dict[str, TrialRecord] = {}
        self.anytime: list[AnytimePoint] = []
        self.exhausted = False

    def run(self) -> SimResult:
        self._fill()
        while self.events:
            when, _, trial_id = self.events[0]
            if self._budget_ends_before(when):
                self._cut(self.clock + (self.budget_s - self.compute) / self.busy)
                break
            heapq.heappop(self.events)
            self._advance(when)
            self._evaluate(self.trials[trial_id])
            self._fill()
            if not self.events:
                self._idle()
        for trial in self._in(PAUSED):  # left paused when the study ended: they stop where they are
            self._end_paused(trial)
        return SimResult(list(self.trials.values()), self.anytime, self._select(), self.clock, self.compute,
                         self.workers, self.startup_s)

    # --- the clock ---------------------------------------------------------------------
    def _advance(self, when: float) -> None:
        self.compute += self.busy * (when - self.clock)
        self.clock = when

    def _budget_ends_before(self, when: float) -> bool:
        return (self.budget_s is not None and self.busy > 0
                and self.compute + self.busy * (when - self.clock) > self.budget_s + _EPS)

    def _budget_left(self) -> bool:
        return self.budget_s is None or self.compute < self.budget_s - _EPS

    def _push(self, trial: TrialRecord, after_s: float) -> None:
        heapq.heappush(self.events, (self.clock + after_s, next(self.order), trial.trial_id))

    def _in(self, status: str) -> list[TrialRecord]:
        return [t for t in self.trials.values() if t.status == status]

    # --- workers -----------------------------------------------------------------------
    def _fill(self) -> None:
        """Give each free worker a paused trial to resume, else a new suggestion."""
        while self.busy < self.workers and self._budget_left():
            if not (self._resume() or self._start()):
                return

    def _resume(self) -> bool:
        next_to_resume = getattr(self.scheduler, "next_to_resume", None)
        trial_id = next_to_resume() if next_to_resume else None
        if trial_id is None:
            return False
        trial = self.trials[trial_id]
        trial.status, trial.starts, trial.segment_start = RUNNING, trial.starts + 1, self.clock
        self.busy += 1
        points = trial.curve.points
        self._push(trial, self.startup_s + points[trial.next_point].seconds - points[trial.next_point - 1].seconds)
        return True

    def _start(self) -> bool:
        if self.exhausted or (self.samples is not None and len(self.trials) >= self.samples):
            return False
        trial_id = f"sim{len(self.trials):05d}"
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            # None is "not now" in Tune; a replay has nothing to wait for, so it ends the sampling.
            self.exhausted = True
            return False
        params, distributions = _sampled(self.searcher, trial_id, config)
        trial = TrialRecord(trial_id, dict(config), params, self.table.nearest(params, distributions),
                            start_s=self.clock, segment_start=self.clock)
        self.trials[trial_id] = trial
        self.scheduler.on_trial_add(None, trial.tune)
        self.busy += 1
        self._push(trial, self.startup_s + trial.curve.points[0].seconds)
        return True

    # --- decisions ---------------------------------------------------------------------
    def _evaluate(self, trial: TrialRecord) -> None:
        """The trial's next evaluation: the scheduler decides, then the searcher hears of it, as in Tune."""
        index = trial.next_point
        point = trial.curve.points[index]
        result = {TIME_ATTR: point.iteration, "training_iteration": index + 1, METRIC: point.val,
                  "max_iterations": trial.curve.budget, "diverged": "", "trial_id": trial.trial_id,
                  "time_total_s": self.clock - trial.start_s}
        trial.iterations, trial.last_val, trial.last_result = point.iteration, point.val, result
        if not self.anytime or point.val > self.anytime[-1].val:
            self.anytime.append(AnytimePoint(self.clock, self.compute, point.val, point.test, trial.trial_id,
                                             point.iteration))
        decision = self.scheduler.on_trial_result(None, trial.tune, result)
        last = index == len(trial.curve.points) - 1
        if decision == STOP:  # Tune tells the searcher of the stopping result with on_trial_complete only
            self._end(trial)
        else:
            self.searcher.on_trial_result(trial.trial_id, result)
            if last:  # the trainable returns
                self._end(trial)
            elif decision == PAUSE:
                self._pause(trial)
            else:
                trial.next_point = index + 1
                self._push(trial, trial.curve.points[index + 1].seconds - point.seconds)
        self._stop_dropped()

    def _leave_worker(self, trial: TrialRecord) -> None:
        trial.compute_s += self.clock - trial.segment_start
        trial.end_s = self.clock
        self.busy -= 1

    def _end(self, trial: TrialRecord, status: str | None = None) -> None:
        self._leave_worker(trial)
        trial.status = status or (FINISHED if trial.iterations >= trial.curve.budget else STOPPED)
        self._tell_complete(trial)

    def _pause(self, trial: TrialRecord) -> None:
        self._leave_worker(trial)
        trial.status = PAUSED
        trial.next_point += 1

    def _end_paused(self, trial: TrialRecord) -> None:
        trial.status = STOPPED  # compute and end time stay those of its pause
        self._tell_complete(trial)

    def _stop_dropped(self) -> None:
        """Paused trials the scheduler will never resume (``TopKAfterRung``) end now: Optuna hears of it."""
        paused_to_stop = getattr(self.scheduler, "paused_to_stop", None)
        for trial_id in paused_to_stop() if paused_to_stop else ():
            self._end_paused(self.trials[trial_id])

    def _idle(self) -> None:
        """Nothing runs and nothing new starts: a scheduler holding paused trials decides now."""
        on_no_more_trials = getattr(self.scheduler, "on_no_more_trials", None)
        if on_no_more_trials and self._in(PAUSED):
            on_no_more_trials()
            self._stop_dropped()
            self._fill()

    def _cut(self, when: float) -> None:
        """The compute budget is spent: every running trial ends where it is."""
        self._advance(when)
        for trial in self._in(RUNNING):
            self._end(trial, CUT)
        self.events.clear()

    def _tell_complete(self, trial: TrialRecord) -> None:
        self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        if trial.last_result is not None:  # Ray's ASHA reads the result; a trial cut before any has none
            self.scheduler.on_trial_complete(None, trial.tune, trial.last_result)

    def _select(self) -> TrialRecord | None:
        ended = [t for t in self.trials.values() if t.last_val is not None]
        pool = [t for t in ended if t.iterations >= t.curve.budget] or ended
        # The earliest trial wins a tie: max keeps the first maximum.
        return max(pool, key=lambda t: t.last_val, default=None)


def _sampled(searcher: Searcher, trial_id: str, config: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, BaseDistribution] | None]:
    """The params Optuna sampled for the trial, with their distributions (the config, for another searcher)."""
    if isinstance(searcher, OptunaSearch):
        ot_trial = internals.optuna_trials(searcher)[trial_id]
        return dict(ot_trial.params), dict(ot_trial.distributions)
    return dict(config), None


# --- a scheduler of its own -------------------------------------------------------------------

class TopKAfterRung(FIFOScheduler):
    """Run ``population`` trials to ``rung``, then continue only the best ``k`` of them to the end.

    Trials that reach the rung before the population is complete are paused; once it is, the
    top ``k`` are resumed and the others stop. A trial reaching the rung later continues if it
    scores at least the k-th best. For the simulator: Tune would need ``choose_trial_to_run``
    to resume a paused trial; the simulator calls ``next_to_resume``, ``paused_to_stop`` and,
    when nothing else can run, ``on_no_more_trials`` (decide with the trials at the rung).
    """

    def __init__(self, rung: int, k: int, population: int, metric: str = METRIC, mode: str = "max") -> None:
        super().__init__()
        if not 1 <= k <= population:
            raise ValueError(f"k={k}, population={population}: need 1 <= k <= population")
        self.rung, self.k, self.population = rung, k, population
        self._metric, self._sign = metric, 1.0 if mode == "max" else -1.0
        self._scores: dict[str, float] = {}  # insertion order: the earlier trial wins a tie
        self._paused: list[str] = []
        self._resume: deque[str] = deque()
        self._stop: list[str] = []
        self.cutoff: float | None = None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001 - Ray's signature
        if result.get(TIME_ATTR, 0) < self.rung or trial.trial_id in self._scores:
            return CONTINUE
        score = self._sign * float(result[self._metric])
        self._scores[trial.trial_id] = score
        if self.cutoff is not None:
            return CONTINUE if score >= self.cutoff else STOP
        if len(self._scores) < self.population:
            self._paused.append(trial.trial_id)
            return PAUSE
        top = self._decide()
        return CONTINUE if trial.trial_id in top else STOP

    def _decide(self) -> set[str]:
        ranked = sorted(self._scores, key=lambda t: -self._scores[t])  # stable: ties keep arrival order
        top = set(ranked[:self.k])
        self.cutoff = self._scores[ranked[min(self.k, len(ranked)) - 1]]
        for trial_id in self._paused:
            (self._resume.append if trial_id in top else self._stop.append)(trial_id)
        self._paused = []
        return top

    def on_no_more_trials(self) -> None:
        if self.cutoff is None and self._scores:
            self._decide()

    def next_to_resume(self) -> str | None:
        return self._resume.popleft() if self._resume else None

    def paused_to_stop(self) -> list[str]:
        stop, self._stop = self._stop, []
        return stop


# --- the methods ----------------------------------------------------------------------------

SchedulerFactory = Callable[[Path, int, "int | None"], TrialScheduler]  # (state dir, max_t, samples)

TOPK_POPULATION = 30  # trials screened at the rung when a study is given a budget, not a count


def asha(grace: int = 300, reduction: float = 3, brackets: int = 1) -> SchedulerFactory:
    return lambda folder, max_t, samples: PersistentASHA(folder / "asha_rungs.json", max_t=max_t, grace_period=grace,
                                                         reduction_factor=reduction, brackets=brackets)


def fifo() -> SchedulerFactory:
    return lambda folder, max_t, samples: FIFOScheduler()


def top_k(rung: int = 300, keep: float = 1 / 3) -> SchedulerFactory:
    """Keep a fraction of the population (a third: what ASHA's reduction 3 keeps at its first rung)."""
    def build(folder: Path, max_t: int, samples: int | None) -> TrialScheduler:
        population = samples or TOPK_POPULATION
        return TopKAfterRung(rung, k=max(1, round(population * keep)), population=population)
    return build


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str
    scheduler: SchedulerFactory
    description: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("random+fifo", "random", fifo(), "random search, every trial to the end"),
    Method("random+asha", "random", asha(), "random search, ASHA (grace 300, reduction 3)"),
    Method("tpe+fifo", "tpe", fifo(), "multivariate TPE with constant liar, every trial to the end"),
    Method("tpe+asha", "tpe", asha(), "the default study: TPE, ASHA (grace 300, reduction 3)"),
    # Reduction 2, not 3: with grace 300 and max_t 900, reduction 3 gives the second and third
    # brackets no rung below 900, so they would be the same; 2 gives rungs {300, 600}, {600}, {}.
    Method("tpe+hyperband", "tpe", asha(reduction=2, brackets=3),
           "TPE, ASHA with 3 brackets (Hyperband-style): rungs at 300 and 600, at 600, or none"),
    Method("gp+asha", "gp", asha(), "Optuna's GPSampler (learns from completed trials only), ASHA"),
    Method("random+topk", "random", top_k(), "random configs to iteration 300, the best third to the end"),
)}


def run_method(name: str, table: CurveTable, *, workers: int, startup_s: float, seed: int = 0,
               samples: int | None = None, budget_s: float | None = None, space: SearchSpace | None = None,
               paper_point: bool = True) -> SimResult:
    """Simulate one registered method; the sampler and numpy's generator both take ``seed``."""
    if name not in METHODS:
        raise ValueError(f"method {name!r}: choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    space = space or get_space("default")
    with tempfile.TemporaryDirectory(prefix="semiseg-sim-") as folder:
        scheduler = method.scheduler(Path(folder), table.budget, samples)
        searcher = make_searcher(space, make_sampler(method.sampler, seed), paper_point=paper_point)
        return simulate(table, searcher, scheduler, workers, startup_s=startup_s, seed=seed, samples=samples,
                        budget_s=budget_s)


def compare(table: CurveTable, names: Sequence[str] = tuple(METHODS), *, seeds: Sequence[int] = (0,),
            **kwargs: Any) -> Iterator[tuple[str, int, SimResult]]:
    """Each method on each seed: (method, seed, result)."""
    for name in names:
        for seed in seeds:
            yield name, seed, run_method(name, table, seed=seed, **kwargs)
