"""A surrogate of the learning-curve table: a Gaussian process from a config to its curves.

The nearest tabulated config is a poor stand-in for a new one when few of the space's params
matter: on the 83 curves of the digits table (leave one config out), its final val mIoU was
off by 8.1 points on average, barely better than the mean of the other configs (8.9), with a
Spearman of 0.36. Every param weighs the same in that distance, so a neighbour that matches
the learning rate but not six params that do nothing loses to one that matches those six.

Here a Gaussian process learns one length scale per param (ARD): the params that matter get
short scales, the others long ones. It predicts the whole val and test curve at once (one
output per evaluation, one kernel), and the seconds from a second process on the log of a
trial's seconds per iteration, spread over the evaluations as the table's median profile.
``validate`` (in ``table``) measures both predictors on held-back configs.

A replayed trial is the posterior mean plus one draw of the noise the process fitted (its
white-noise level: seed noise and what the kernel cannot explain), the same offset for the
whole curve, so that repeats of a method see seeds differ as real studies do.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

from study.simulate.curve import Curve, CurvePoint, config_id, unit


class CurveSurrogate:
    """Fitted once per table; ``curve(params)`` gives a config's predicted curve."""

    def __init__(self, curves: Sequence[Curve], distributions: Mapping[str, BaseDistribution]) -> None:
        if len(curves) < 3:
            raise ValueError(f"a surrogate needs at least 3 full curves, the table has {len(curves)}")
        self.names = sorted(distributions)
        self.distributions = dict(distributions)
        self.iterations = [p.iteration for p in curves[0].points]
        self.has_test = all(p.test is not None for c in curves for p in c.points)
        inputs = np.array([self.encode(c.params) for c in curves])
        scores = np.array([[p.val for p in c.points] + ([p.test for p in c.points] if self.has_test else [])
                           for c in curves])
        self._inputs = inputs
        self._seconds = np.array([[p.seconds for p in c.points] for c in curves])
        # The share of a trial's final seconds at each evaluation: the table's median profile.
        self.seconds_profile = np.median(self._seconds / self._seconds[:, -1:], axis=0)
        self.score_gp, self.score_mean = _fit(inputs, scores)
        self.noise_sd = math.sqrt(float(self.score_gp.kernel_.k2.noise_level))

    @functools.cached_property
    def _seconds_model(self) -> tuple[Any, np.ndarray]:
        # Fitted on first need: ``validate`` refits the surrogate once per held-out config for scores alone.
        return _fit(self._inputs, np.log(self._seconds[:, -1:] / self.iterations[-1]))

    def encode(self, params: Mapping[str, Any]) -> list[float]:
        """The unit cube of the space: a number's place in its range (log ranges on a log scale), a
        category one-hot; a conditional param that is absent sits mid-range (its category says why)."""
        features: list[float] = []
        for name in self.names:
            dist = self.distributions[name]
            if isinstance(dist, CategoricalDistribution):
                features += [1.0 if params.get(name) == choice else 0.0 for choice in dist.choices]
            else:
                features.append(unit(params[name], dist) if name in params else 0.5)
        return features

    def scores(self, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """The posterior mean of the scores: (val per evaluation, test per evaluation or None)."""
        scores = self.score_gp.predict(np.array([self.encode(params)]))[0] + self.score_mean
        n = len(self.iterations)
        return scores[:n], (scores[n:] if self.has_test else None)

    def predict(self, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The posterior mean: (val per evaluation, test per evaluation or None, seconds at each evaluation)."""
        gp, mean = self._seconds_model
        per_iteration = math.exp(float(gp.predict(np.array([self.encode(params)])).ravel()[0] + mean[0]))
        return (*self.scores(params), per_iteration * self.iterations[-1] * self.seconds_profile)

    def curve(self, params: Mapping[str, Any], rng: np.random.Generator | np.random.RandomState | None = None
              ) -> Curve:
        """A replayable curve of ``params``: the mean, plus one noise draw from ``rng`` if given."""
        val, test, seconds = self.predict(params)
        offset = float(rng.normal(0.0, self.noise_sd)) if rng is not None else 0.0
        clip = lambda v: min(1.0, max(0.0, float(v) + offset))  # noqa: E731 - an mIoU stays in [0, 1]
        points = tuple(CurvePoint(it, clip(val[i]), clip(test[i]) if test is not None else None, float(seconds[i]))
                       for i, it in enumerate(self.iterations))
        key = f"surrogate/{config_id(json.dumps(dict(params), default=str))}"
        return Curve(key, key.split("/", 1)[1], None, dict(params), points)


def _fit(inputs: np.ndarray, targets: np.ndarray) -> tuple[Any, np.ndarray]:
    """A GP with one length scale per input and a white-noise term, on centred targets."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    mean = targets.mean(axis=0)
    kernel = (ConstantKernel(1.0) * RBF(length_scale=np.ones(inputs.shape[1]), length_scale_bounds=(1e-2, 1e3))
              + WhiteKernel(1e-2, noise_level_bounds=(1e-8, 1.0)))
    with warnings.catch_warnings():
        # A param that does nothing drives its length scale to the upper bound: that is the answer.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=0, random_state=0).fit(inputs, targets - mean)
    return gp, mean
