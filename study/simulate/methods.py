"""The search methods a simulation compares: a sampler and a scheduler each, built as a study builds them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search_spaces import SearchSpace, get_space
from study.search import METRIC, TIME_ATTR, PersistentASHA, make_sampler, make_searcher
from study.simulate.dehb import dehb_pair  # the ``dehb`` package itself is imported when a DEHB method runs
from study.simulate.replay import CONTINUE, PAUSE, STOP, SimResult, simulate
from study.simulate.table import CurveTable


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

SchedulerFactory = Callable[[int, "int | None"], TrialScheduler]  # (max_t, samples)
# (space, max_t, seed, paper_point): a searcher and a scheduler that must know each other (DEHB's fidelities)
PairFactory = Callable[[SearchSpace, int, int, bool], "tuple[Searcher, TrialScheduler]"]

TOPK_POPULATION = 30  # trials screened at the rung when a study is given a budget, not a count


def asha(grace: int = 300, reduction: float = 3, brackets: int = 1) -> SchedulerFactory:
    return lambda max_t, samples: PersistentASHA(None, max_t=max_t, grace_period=grace, reduction_factor=reduction,
                                                 brackets=brackets)


def fifo() -> SchedulerFactory:
    return lambda max_t, samples: FIFOScheduler()


def top_k(rung: int = 300, keep: float = 1 / 3) -> SchedulerFactory:
    """Keep a fraction of the population (a third: what ASHA's reduction 3 keeps at its first rung)."""
    def build(max_t: int, samples: int | None) -> TrialScheduler:
        population = samples or TOPK_POPULATION
        return TopKAfterRung(rung, k=max(1, round(population * keep)), population=population)
    return build


@dataclass(frozen=True)
class Method:
    """A sampler (Optuna's, behind ``StudySearcher``) and a scheduler; or, with ``pair``, both built by it."""

    name: str
    sampler: str
    scheduler: SchedulerFactory
    description: str
    pair: PairFactory | None = None


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
    # Not a study's option: on the digits preset the contrastive loss starts at iteration 200, and
    # `run` moves a grace period before it to 300 (study/spec.py, grace_after_ramp_up). Measured to
    # price that rule.
    Method("tpe+asha-g100", "tpe", asha(grace=100), "TPE, ASHA (grace 100, reduction 3): rungs at 100 and 300"),
    Method("random+topk", "random", top_k(), "random configs to iteration 300, the best third to the end"),
    Method("dehb", "dehb", fifo(), "DEHB 0.1.2 (differential evolution in Hyperband brackets, eta 3): each trial "
           "to the fidelity DEHB gives it, 100, 300 or 900 iterations", pair=dehb_pair),
)}


def method_from_flags(searcher: str = "tpe", scheduler: str = "asha", *, grace: int = 300, reduction: float = 3,
                      brackets: int = 1) -> Method:
    """The method of a study's flags (``semiseg-study simulate``): a registered one where it matches."""
    if scheduler == "asha":
        factory, what = asha(grace, reduction, brackets), f"ASHA (grace {grace}, reduction {reduction:g}" + (
            f", {brackets} brackets)" if brackets > 1 else ")")
    elif scheduler == "fifo":
        factory, what = fifo(), "every trial to the end"
    elif scheduler == "topk":
        factory, what = top_k(grace, 1 / reduction), f"the best 1/{reduction:g} at iteration {grace} to the end"
    else:
        raise ValueError(f"scheduler {scheduler!r}: choose asha, fifo or topk")
    name = f"{searcher}+{scheduler}"
    default = METHODS.get(name)
    if default is not None and (scheduler == "fifo" or (grace, reduction, brackets) == (300, 3, 1)):
        return default
    return Method(name, searcher, factory, f"{searcher} search, {what}")


def run_method(method: str | Method, table: CurveTable, *, workers: int, startup_s: float, seed: int = 0,
               samples: int | None = None, budget_s: float | None = None, space: SearchSpace | None = None,
               paper_point: bool = True) -> SimResult:
    """Simulate one method (a registered name or a ``Method``); the sampler (or ``pair``) and numpy's generator
    take ``seed``."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
        method = METHODS[method]
    space = space or get_space("default")
    if method.pair is not None:
        searcher, scheduler = method.pair(space, table.budget, seed, paper_point)
    else:
        scheduler = method.scheduler(table.budget, samples)
        searcher = make_searcher(space, make_sampler(method.sampler, seed), paper_point=paper_point)
    return simulate(table, searcher, scheduler, workers, startup_s=startup_s, seed=seed, samples=samples,
                    budget_s=budget_s)


def compare(table: CurveTable, names: Sequence[str] = tuple(METHODS), *, seeds: Sequence[int] = (0,),
            **kwargs: Any) -> Iterator[tuple[str, int, SimResult]]:
    """Each method on each seed: (method, seed, result)."""
    for name in names:
        for seed in seeds:
            yield name, seed, run_method(name, table, seed=seed, **kwargs)

