"""DEHB (Awad, Mallik and Hutter, 2021: differential evolution inside Hyperband) as a Tune searcher and scheduler.

DEHB proposes a point of the unit cube [0, 1]^d together with a fidelity (here the iteration a
trial trains to: 100, 300 or 900 on the digits table, ``eta`` 3), and learns from the score at
that fidelity. ``DEHBSearcher`` asks ``dehb.DEHB`` for a job, maps its vector to the space's
params and keeps the fidelity by trial id; ``FidelityStop`` stops a trial at the first evaluation
that reaches it; on completion the searcher tells DEHB -val mIoU (DEHB minimises) and the trial's
seconds. The fidelity stays out of the config because the simulator takes a non-Optuna config for
the params themselves (``replay._sampled``), and the surrogate and the nearest-curve rule would
read an extra key as a param.

``dehb`` 0.1.2 pins numpy<2 in its metadata but runs ask/tell under numpy 2; it is installed
``--no-deps`` (Makefile) and imported only when a DEHB method is built.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any, Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search_spaces import SearchSpace
from study.search import METRIC, TIME_ATTR
from study.simulate.curve import unit

ETA = 3


def from_unit(u: float, dist: BaseDistribution) -> Any:
    """The inverse of ``curve.unit``: a value of ``dist`` at ``u`` in [0, 1] (a log range on a log scale,
    a step range on its grid); a categorical's choices split [0, 1] into equal bins."""
    u = min(1.0, max(0.0, float(u)))
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    low, high = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    step = getattr(dist, "step", None)
    if step:
        value = low + round((value - low) / step) * step
    value = min(high, max(low, value))
    return int(round(value)) if isinstance(dist, optuna.distributions.IntDistribution) else value


def to_unit(value: Any, dist: BaseDistribution) -> float:
    """A value's point in [0, 1]: ``curve.unit`` for numbers, the middle of its bin for a category."""
    if isinstance(dist, CategoricalDistribution):
        return (dist.choices.index(value) + 0.5) / len(dist.choices)
    return unit(value, dist)


def make_dehb(dimensions: int, min_fidelity: int, max_fidelity: int, eta: int, seed: int) -> Any:
    """A quiet ``dehb.DEHB`` for ask/tell only: one in-process "worker" (``n_workers`` > 1 would start a
    Dask cluster to run ``f`` itself, and ask/tell takes any number of outstanding jobs anyway), nothing saved
    (``save_freq="end"`` saves only at the end of ``run``, which is never called), its log file in a
    temporary folder that is gone once the handlers are removed."""
    from dehb import DEHB
    from loguru import logger

    with tempfile.TemporaryDirectory(prefix="dehb-") as folder:
        dehb = DEHB(f=None, dimensions=dimensions, min_fidelity=min_fidelity, max_fidelity=max_fidelity, eta=eta,
                    n_workers=1, output_path=folder, seed=int(seed), save_freq="end", log_level="ERROR")
        # DEHB replaces every loguru handler with a stdout one and adds a file in ``folder``: drop both.
        logger.remove()
    return dehb


class DEHBSearcher(Searcher):
    """Suggests what DEHB asks for; ``fidelity[trial_id]`` is the iteration the trial should stop at.

    With ``paper_point``, the first trial runs the space's paper point at the fidelity of DEHB's first
    job, and DEHB is told its score for the paper point's vector: it enters DEHB's population as any
    evaluated config does (DEHB 0.1.2 has no other way to take a given point).
    """

    def __init__(self, space: SearchSpace, max_t: int, *, min_t: int | None = None, eta: int = ETA, seed: int = 0,
                 paper_point: bool = True, metric: str = METRIC, mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.distributions = space.distributions()
        min_t = min_t or max(1, round(max_t / eta ** 2))  # three fidelities: max_t / 9, max_t / 3, max_t
        self.dehb = make_dehb(len(self.distributions), min_t, max_t, eta, seed)
        self.fidelity: dict[str, int] = {}
        self.told: dict[str, dict[str, float]] = {}  # trial id -> what DEHB was told
        self._jobs: dict[str, dict[str, Any]] = {}
        self._paper = dict(space.paper_point) if paper_point and space.paper_point else None

    def params(self, vector: np.ndarray) -> dict[str, Any]:
        """The params of a point of the unit cube, on the branch they take (a conditional param only where
        its condition holds): the space replays the values, as it replays a recorded config."""
        values = {name: from_unit(u, dist) for u, (name, dist) in zip(vector, self.distributions.items())}
        return {name: value for name, (value, _) in self.space.replay(values).items()}

    def suggest(self, trial_id: str) -> dict[str, Any]:
        job = self.dehb.ask()
        if self._paper is not None:
            params, self._paper = self._paper, None
            job["config"] = np.array([to_unit(params[name], dist) if name in params else 0.5
                                      for name, dist in self.distributions.items()])
        else:
            params = self.params(job["config"])
        self._jobs[trial_id] = job
        self.fidelity[trial_id] = int(round(float(job["fidelity"])))
        return params

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        """Tell DEHB the score at the fidelity; a trial that failed or ended short of it (the study's
        budget ran out) is told as infinitely bad, so that its bracket does not wait on it."""
        job = self._jobs.pop(trial_id, None)
        if job is None:
            return
        reached = not error and result is not None and result.get(TIME_ATTR, 0) >= self.fidelity[trial_id]
        sign = -1.0 if self.mode == "max" else 1.0
        told = {"fitness": sign * float(result[self.metric]) if reached else math.inf,
                "cost": float(result.get("time_total_s", 0.0)) if result else 0.0}
        self.dehb.tell(job, told)
        self.told[trial_id] = told


class FidelityStop(FIFOScheduler):
    """Stops a trial at its first evaluation at or past the fidelity its ``DEHBSearcher`` gave it."""

    def __init__(self, searcher: DEHBSearcher) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001 - Ray's signature
        reached = result.get(TIME_ATTR, 0) >= self.searcher.fidelity[trial.trial_id]
        return TrialScheduler.STOP if reached else TrialScheduler.CONTINUE


def dehb_pair(space: SearchSpace, max_t: int, seed: int, paper_point: bool) -> tuple[DEHBSearcher, FidelityStop]:
    """The searcher and the scheduler of the ``dehb`` method (``Method.pair``): fidelities max_t / 9, / 3, max_t."""
    searcher = DEHBSearcher(space, max_t, seed=seed, paper_point=paper_point)
    return searcher, FidelityStop(searcher)
