"""The event loop of a simulated study: N workers, a simulated clock, the real searcher and scheduler.

A free worker takes the next suggestion; a trial costs ``startup_s``, then the tabulated
seconds between its evaluations; the scheduler decides at each evaluation, in simulated-time
order (a heap of events), and the searcher hears of results as Tune tells it. A study ends
after ``samples`` trials, or when the compute spent (the sum of the trials' seconds,
start-up included) reaches ``budget_s``.
"""

from __future__ import annotations

import heapq
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.space import quiet_optuna
from study import ray_internals as internals
from study.search import METRIC, TIME_ATTR
from study.simulate.table import Curve, CurveTable

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP
RUNNING, PAUSED, FINISHED, STOPPED, CUT = "running", "paused", "finished", "stopped", "cut"
_EPS = 1e-9


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
    iterations_spent: int = 0  # every trial's last evaluated iteration, summed: compute that no machine load skews


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
        # The surrogate's noise comes from numpy's global generator, which ``simulate`` seeds.
        trial = TrialRecord(trial_id, dict(config), params, self.table.curve_for(params, distributions, np.random),
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
                                             point.iteration, sum(t.iterations for t in self.trials.values())))
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


