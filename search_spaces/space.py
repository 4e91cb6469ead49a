"""SearchSpace: what a study searches, as an Optuna define-by-run function plus two fixed points.

Define-by-run because the spaces are conditional: the InfoNCE temperature means
nothing when the paper's loss is chosen, so it is only asked for on that branch
and no trial is spent varying a value the run ignores.

A space knows nothing of Ray or of the study: it maps an Optuna trial to
TrainConfig overrides. ``check_keys`` catches a typo or an out-of-range value
when the space is loaded, not hours later inside a worker.

``groups`` names the parts of the method that the searched params belong to (the memory
bank and its loss, the pseudo-labels and the teacher, ...): ``semiseg-study ablate`` resets
or adds one group at a time, so a group is what "this part is worth N points" is said of.
The space declares them because only it knows which of its params act together.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from trainer.config import ConfigError, TrainConfig, did_you_mean, field_names

CHECK_SAMPLES = 20  # random trials per check: enough to reach every branch of a few categoricals


@dataclass(frozen=True)
class SearchSpace:
    """A named search space. Treat ``paper_point`` and ``fixed`` as read-only: spaces are shared.

    ``suggest`` maps an Optuna trial to TrainConfig overrides (the sampled values).
    ``paper_point`` gives the paper's value of every param the space searches, so the
    study can evaluate it first as the reference point; ``{}`` means no such point.
    ``fixed`` holds overrides applied to every trial (e.g. a shorter budget).
    ``groups`` maps a part of the method to the searched params (TrainConfig keys) it
    consists of; a param is in one group at most, and a searched param in none is a group
    of its own when the study is ablated.
    A trial's config is ``config(suggest(trial), base)``.
    """

    name: str
    description: str
    suggest: Callable[[optuna.trial.Trial], dict[str, Any]]
    paper_point: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def check_keys(self, base: Mapping[str, Any] | None = None, *, samples: int = CHECK_SAMPLES) -> set[str]:
        """Raise ConfigError unless every config the space can produce is a valid TrainConfig;
        return the params it searches (on some branch).

        Runs ``suggest`` on ``samples`` random trials of a throwaway in-memory study
        (seeded, so the check is reproducible), and replays ``paper_point`` through
        ``suggest`` to prove it names exactly the searched params, inside their ranges.
        ``base`` holds overrides the caller applies between ``fixed`` and the sample
        (a study's budget, --set values), so the check sees the configs trials will run:
        ``TrainConfig.from_dict({**fixed, **base, **sample})``. Each group must name
        params the space samples (on some branch), none twice.
        """
        base = dict(base or {})
        self._check_keys_of("fixed", self.fixed)
        self._check_keys_of("base", base)
        self._check_config("fixed" if not base else "fixed and base", base, {})
        searched: set[str] = set(self.paper_point)
        for _, values in self.sampled_trials(samples):
            self._check_config("sampled trial", base, values)
            searched.update(values)
        if self.paper_point:
            self.check_point(self.paper_point, base)
        self.check_groups(searched)
        return searched

    def sampled_trials(self, samples: int = CHECK_SAMPLES) -> Iterator[tuple[optuna.trial.Trial, dict[str, Any]]]:
        """``samples`` trials of a throwaway in-memory study with a seeded random sampler, each with
        the values ``suggest`` gave it: the same trials on every call, so what is found from them
        (every branch of a few categoricals, in practice) is reproducible."""
        with quiet_optuna():
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            for _ in range(samples):
                trial = study.ask()
                yield trial, self._run(trial, "sampled trial")

    def distributions(self, samples: int = CHECK_SAMPLES) -> dict[str, BaseDistribution]:
        """Every param the space samples on some branch, with its distribution, sorted by name:
        found on ``sampled_trials`` and the paper point, as ``check_keys`` finds the searched params."""
        found: dict[str, BaseDistribution] = {}
        for trial, _ in self.sampled_trials(samples):
            found.update(trial.distributions)
        if self.paper_point:
            found.update({name: dist for name, (_, dist) in self.replay(self.paper_point).items()})
        return dict(sorted(found.items()))

    def check_groups(self, searched: set[str]) -> None:
        """Raise ConfigError unless each group is a non-empty list of distinct ``searched`` keys,
        and no key is in two groups (a reset of one group would then change another)."""
        owner: dict[str, str] = {}
        for group, members in self.groups.items():
            if not isinstance(group, str) or not group.strip():
                raise self._error(f"groups: a group name must be a non-empty string, not {group!r}")
            if isinstance(members, str) or not isinstance(members, (list, tuple)) or not members:
                raise self._error(f"group {group!r} must list the params it holds, e.g. [bank_size, temperature], "
                                  f"not {members!r}")
            for member in members:
                if member not in searched:
                    raise self._error(f"group {group!r} names {member!r}, which the space does not search"
                                      f"{did_you_mean(str(member), searched)} (searched: "
                                      f"{', '.join(sorted(searched)) or 'nothing'})")
                if member in owner:
                    where = (f"twice in group {group!r}" if owner[member] == group
                             else f"in two groups, {owner[member]!r} and {group!r}")
                    raise self._error(f"{member!r} is {where}: put each param in one group, once")
                owner[member] = group

    def config(self, sample: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> TrainConfig:
        """The TrainConfig of one trial: the dataset preset, ``fixed``, the caller's ``base``, the sample."""
        return TrainConfig.from_dict({**self.fixed, **(base or {}), **sample})

    def replay(self, values: Mapping[str, Any]) -> dict[str, tuple[Any, BaseDistribution]]:
        """The params a config's values were sampled as, with their distributions.

        ``values`` is a trial's config (extra keys are ignored); replaying ``suggest`` on it
        walks the branch that trial took, so a conditional param appears only where sampled.
        """
        trial = optuna.trial.FixedTrial(dict(values))
        with warnings.catch_warnings():  # a value outside today's range is still what was run
            warnings.simplefilter("ignore")
            self._run(trial, "replayed config")
        return {name: (trial.params[name], dist) for name, dist in trial.distributions.items()}

    # ------------------------------------------------------------------------------------
    def _error(self, message: str) -> ConfigError:
        return ConfigError(f"search space {self.name!r}: {message}")

    def _run(self, trial: optuna.trial.BaseTrial, what: str) -> dict[str, Any]:
        values = self.suggest(trial)
        if not isinstance(values, dict):
            raise self._error(f"suggest returned {type(values).__name__} for a {what}, expected a dict")
        return values

    def _check_keys_of(self, what: str, values: dict[str, Any]) -> None:
        known = field_names()
        for key in values:
            if key not in known:
                raise self._error(f"{what}: unknown TrainConfig key {key!r}{did_you_mean(str(key), known)}")

    def _check_config(self, what: str, base: dict[str, Any], values: dict[str, Any]) -> None:
        """Known keys, no key both searched and fixed, and a config that validates."""
        self._check_keys_of(what, values)
        both = sorted(set(values) & set(self.fixed))
        if both:
            raise self._error(f"{both[0]!r} is both searched and fixed: remove it from fixed")
        try:
            self.config(values, base)
        except ConfigError as err:
            raise self._error(f"{what}: {err}") from None

    def check_point(self, point: Mapping[str, Any], base: Mapping[str, Any] | None = None,
                    what: str = "paper_point") -> None:
        """Raise ConfigError unless ``point`` gives exactly the values the space samples on its branch,
        inside their ranges, and makes a valid TrainConfig (the paper point, a point to evaluate first)."""
        base = dict(base or {})
        trial = optuna.trial.FixedTrial(dict(point))
        self._check_keys_of(what, dict(point))
        try:
            with warnings.catch_warnings():  # out-of-range values are reported below, as errors
                warnings.simplefilter("ignore")
                values = self._run(trial, what)
        except ValueError as err:  # a searched param the point leaves out, or a value not among the choices
            missing = re.search(r"parameter '(.+?)' is not found", str(err))
            if missing:
                raise self._error(f"{what} gives no value for {missing[1]!r}, which the space searches "
                                  "at that point") from None
            raise self._error(f"{what} does not fit the space: {err}") from None
        extra = sorted(set(point) - set(trial.params))
        if extra:
            raise self._error(f"{what} sets {extra[0]!r}, which the space does not search at that "
                              "point: move it to fixed")
        for name, dist in trial.distributions.items():
            if not _contains(dist, trial.params[name]):
                raise self._error(f"{what} {name} = {trial.params[name]!r} is outside the searched "
                                  f"range {dist}")
        self._check_config(what, base, values)


def _contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (range and step grid), with public attributes only."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    low, high, step = dist.low, dist.high, getattr(dist, "step", None)
    if not low <= value <= high:
        return False
    if step:
        offset = (value - low) / step
        return abs(offset - round(offset)) <= 1e-8 * max(1.0, abs(offset))
    return True


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Hide Optuna's "A new study created in ..." line: a log line amid the caller's own output."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
