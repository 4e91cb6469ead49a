"""The private attributes of Ray Tune's OptunaSearch and ASHAScheduler that the study relies on.

Ray is not pinned (``ray[tune]>=2.40``) and these names are not its public API, so every
access goes through one function here. ``check_release`` runs before a study writes anything,
and ``check`` again when its searcher and scheduler are built: a Ray release that renames one
fails at the start of a study with the attribute and Ray's version named, never in the middle
of it with an AttributeError, and leaves no half-made study folder behind.

What each is for:

* ``OptunaSearch._ot_trials`` (Tune trial id -> Optuna trial) and ``_ot_study``: to report
  intermediate values and record an ASHA-stopped trial as PRUNED (Ray tells Optuna COMPLETE);
  ``_completed_trials``: the trials already told.
* ``ASHAScheduler._brackets`` with each bracket's ``_rungs`` (milestone, {trial id: score}), and
  ``_trial_info`` (trial id -> bracket): to save the rungs and restore them on resume
  (``Tuner.restore`` does not, ray issue 30838).
* ``Tuner._local_tuner.get_run_config()``: the callbacks a restored Tuner runs with. They are
  the ones pickled with the experiment (``Tuner.restore`` takes no RunConfig), and the driver
  hands its callback what this run alone knows (Ctrl-C, the progress bar).
* ``ExperimentAnalysis._fetch_trial_dataframes``: Tune builds an ExperimentAnalysis at the end of
  every ``Tuner.fit`` and reads each trial's ``result.json`` in it, one after another, into the
  ResultGrid that ``fit`` returns. The study never looks at that grid (its record is the Parquet
  store), and on an object store the read is three round trips a trial: a study of hundreds of
  trials waited seconds to minutes at its end for nothing. ``tune_results_left_unread`` skips it.
* ``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``: the driver's environment variables
  Tune copies into every trial's runtime_env. It holds the AWS credentials, and Ray writes each
  runtime_env, secret key and all, into ``runtime_env_agent.log`` in the session logs of every
  node (and keeps it in the GCS). ``keep_credentials_out_of_runtime_envs`` takes them out: a
  study's nodes use their own credentials (environment, files, instance role), which
  ``study/reach.py`` checks before any trial.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import optuna

_EXPECTED = {
    "OptunaSearch": {"_ot_trials": dict, "_ot_study": optuna.Study, "_completed_trials": set},
    "ASHAScheduler": {"_brackets": list, "_trial_info": dict},
    "ASHA bracket": {"_rungs": list},
}


class RayInternalsError(RuntimeError):
    """This Ray release lacks a private attribute the study relies on."""


def _changed(what: str) -> RayInternalsError:
    import ray

    return RayInternalsError(
        f"Ray {ray.__version__}: {what}; this Ray release changed a private attribute that semiseg-study relies "
        "on (study/ray_internals.py): install a Ray release it supports (pip install 'ray[tune]==2.60.0') or "
        "update that module")


def optuna_trials(searcher: Any) -> dict[str, optuna.Trial]:
    return searcher._ot_trials


def optuna_study(searcher: Any) -> optuna.Study:
    return searcher._ot_study


def completed_trials(searcher: Any) -> set[str]:
    return searcher._completed_trials


def asha_brackets(scheduler: Any) -> list[Any]:
    return scheduler._brackets


def bracket_rungs(bracket: Any) -> list[tuple[float, dict[str, float]]]:
    """(milestone, {trial id: score}) pairs of one bracket, highest milestone first (Ray's order)."""
    return bracket._rungs


def asha_trial_info(scheduler: Any) -> dict[str, Any]:
    return scheduler._trial_info


def tuner_callbacks(tuner: Any) -> list[Any] | None:
    """The callbacks ``tuner`` (new or restored) will run with in this process; None under Ray
    Client (``--address ray://``), where the Tuner and its callbacks run on the cluster."""
    if getattr(tuner, "_is_ray_client", False):
        return None
    local = getattr(tuner, "_local_tuner", None)
    if local is None or not callable(getattr(local, "get_run_config", None)):
        raise _changed("Tuner._local_tuner.get_run_config is missing")
    return list(local.get_run_config().callbacks or [])


# What Tune would copy from the driver into each trial's runtime_env, and so into Ray's logs.
CREDENTIAL_ENV_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                 "AWS_SECURITY_TOKEN"})


def _propagated_env_vars() -> set[str]:
    from ray.tune.execution import class_cache

    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(names, (set, frozenset)):
        raise _changed("ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE is missing")
    return set(names)


def keep_credentials_out_of_runtime_envs() -> None:
    """Tune copies no credential of the driver into a trial's runtime_env (the module docstring says why)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = _propagated_env_vars() - CREDENTIAL_ENV_VARS


def _trial_dataframes_fetcher() -> Any:
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    every = getattr(ExperimentAnalysis, "_fetch_trial_dataframes", None)
    if not callable(every):
        raise _changed("ExperimentAnalysis._fetch_trial_dataframes is missing")
    return every


@contextlib.contextmanager
def tune_results_left_unread() -> Iterator[None]:
    """While open, the ExperimentAnalysis that ``Tuner.fit`` builds at its end reads no trial's
    ``result.json`` (the module docstring says why): the ResultGrid it returns has each trial's
    last result, config and checkpoint, and an empty frame of its history (as Tune gives a trial
    without results). ``ExperimentAnalysis(path)``, outside, reads the files as before."""
    from pandas import DataFrame
    from ray.tune.analysis import experiment_analysis

    every = _trial_dataframes_fetcher()

    def left_unread(analysis: Any) -> dict[str, DataFrame]:
        return {trial.trial_id: DataFrame() for trial in analysis.trials}

    experiment_analysis.ExperimentAnalysis._fetch_trial_dataframes = left_unread
    try:
        yield
    finally:
        experiment_analysis.ExperimentAnalysis._fetch_trial_dataframes = every


def check(obj: Any, kind: str) -> None:
    """Raise RayInternalsError unless ``obj`` (of ``kind``, a key of ``_EXPECTED``) has what we use."""
    for name, expected in _EXPECTED[kind].items():
        value = getattr(obj, name, None)
        if not isinstance(value, expected):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise _changed(f"{kind}.{name} is {found}, expected a {expected.__name__}")
    if kind == "ASHAScheduler":
        for bracket in asha_brackets(obj):
            check(bracket, "ASHA bracket")


def check_release() -> None:
    """Raise RayInternalsError unless this Ray's OptunaSearch and ASHAScheduler have what we use,
    on throwaway instances (cheap: no Ray needs to run)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces.space import quiet_optuna

    with quiet_optuna():  # its in-memory study would announce itself
        searcher = OptunaSearch(space=lambda trial: None, metric="score", mode="max")
    check(searcher, "OptunaSearch")
    check(ASHAScheduler(metric="score", mode="max"), "ASHAScheduler")
    _propagated_env_vars()
    _trial_dataframes_fetcher()
