"""Optuna and ASHA as Ray Tune sees them, with two known traps fixed.

1. Ray's ``OptunaSearch`` tells Optuna that a trial ASHA stopped is COMPLETE, with its
   truncated score, so TPE learns from cut-short runs as if they had finished.
   ``StudySearcher`` records such a trial as PRUNED, with its intermediate values
   reported at the trainer's own iterations.
2. ``Tuner.restore`` brings back the searcher but not ASHA's rungs (ray issue 30838), so
   a resumed study would prune differently. ``PersistentASHA`` writes its rungs to a
   JSON file in the study folder after every decision that changed them, and reads them back
   on resume.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SearchSpace
from search_spaces.space import quiet_optuna
from study import ray_internals as internals
from study.records import ERRORED, FINISHED, LOST, METRIC, STOPPED, stored_distributions, stored_params
from study.write_behind import WriteBehind
from study.location import Location, as_location

logger = logging.getLogger(__name__)

TIME_ATTR = "iteration"


class DefineByRun:
    """Ray's define-by-run hook: the space samples through ``trial``; constants it returns pass on.

    A class, not a closure: Tune pickles the searcher with the experiment.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        values = self.space.suggest(trial)
        constants = {k: v for k, v in values.items() if k not in trial.params}
        return constants or None


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``--searcher KIND``: what a study and a simulated one search with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "gp":
            # GP regression (torch, scipy) on COMPLETE trials only: ASHA-pruned ones teach it nothing,
            # and the conditional temperature falls to its independent (random) sampler.
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"sampler {kind!r}: choose tpe, random or gp")


def make_searcher(space: SearchSpace, sampler: optuna.samplers.BaseSampler, *, storage: Any = None,
                  study_name: str = "simulation", paper_point: bool = True,
                  points: Sequence[Mapping[str, Any]] = (), record: "Location | None" = None) -> "StudySearcher":
    """The searcher of a study: the space's paper point, then ``points``, first; Optuna's record in
    ``storage`` (None: in memory, as a simulated study keeps it). ``record``: the study's folder,
    whose Parquet trials table a resumed searcher brings Optuna in line with."""
    first = ([dict(space.paper_point)] if paper_point and space.paper_point else []) + [dict(p) for p in points]
    # Optuna announces every study it creates ("A new study created in RDB ..."), a log line amid
    # the study's own; where the record lives is the study's to say (run_study, for --storage).
    with quiet_optuna():
        return StudySearcher(space=DefineByRun(space), metric=METRIC, mode="max", sampler=sampler, storage=storage,
                             study_name=study_name, points_to_evaluate=first or None, record=record)


class StudySearcher(OptunaSearch):
    """OptunaSearch that records ASHA-stopped trials as pruned and failed trials as failed."""

    def __init__(self, *args: Any, record: "Location | None" = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The study's folder, whose Parquet trials table a restored searcher brings Optuna in line with.
        self.record = None if record is None else as_location(record)
        internals.check(self, "OptunaSearch")
        # A study in a remote location keeps Optuna's SQLite on the driver and its snapshot there.
        storage = kwargs.get("storage")
        self._snapshot_storage = storage if hasattr(storage, "upload") else None
        # The result that ends a trial comes again with on_trial_complete, and a retried trial
        # replays its last evaluation: each step is reported once (Optuna warns on repeats).
        self._reported_steps: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trials = internals.optuna_trials(self)
        if trial_id in internals.completed_trials(self) or trial_id not in ot_trials:
            return
        if result.get("diverged") or METRIC not in result:
            return
        step = int(result[TIME_ATTR])
        if step in self._reported_steps.setdefault(trial_id, set()):
            return
        self._reported_steps[trial_id].add(step)
        try:
            ot_trials[trial_id].report(float(result[METRIC]), step)
        except Exception as err:  # noqa: BLE001 - Optuna warns or raises on repeats; keep going
            logger.debug("optuna report skipped: %s", err)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trials, completed = internals.optuna_trials(self), internals.completed_trials(self)
        if trial_id in completed or trial_id not in ot_trials:
            return
        state, value = outcome(result, error)
        if state != TrialState.FAIL and result:
            # Tune hands the result that ended a trial only to on_trial_complete: keep it as
            # the last intermediate value (the point where ASHA stopped the trial).
            self.on_trial_result(trial_id, result)
        try:
            # A trial told before the driver died and restored from an older snapshot runs to its
            # end again: Optuna keeps the first telling (the same outcome, the run is repeatable).
            internals.optuna_study(self).tell(ot_trials[trial_id], value, state=state, skip_if_finished=True)
        except Exception as err:  # noqa: BLE001 - the storage is unreachable, say; the study goes on
            logger.warning("could not record trial %s in Optuna: %s", trial_id, err)
        completed.add(trial_id)
        # Nothing of an ended trial stays in the driver but its id: a long study stays small.
        self._reported_steps.pop(trial_id, None)
        ot_trials.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """Tune's checkpoint of the searcher; Optuna's snapshot goes to the location first, so that
        the two agree on a driver that resumes elsewhere (study/optuna_snapshot.py)."""
        if getattr(self, "_snapshot_storage", None) is not None:
            self._snapshot_storage.upload()
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """Restore, then fail the Optuna trials asked for after the snapshot (the driver died):
        left RUNNING, constant liar would count them as running forever."""
        super().restore(checkpoint_path)
        internals.check(self, "OptunaSearch")
        study = internals.optuna_study(self)
        known = {trial.number for trial in internals.optuna_trials(self).values()}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                study.tell(trial.number, state=TrialState.FAIL)
        record = getattr(self, "record", None)  # None: a searcher pickled before it had one
        if record is not None:
            from study.store import ResultStore

            added = add_ended_trials(study, ResultStore(record, record.name).trials().to_pylist())
            if added:
                logger.info("added %d ended trials of the Parquet record that Optuna's snapshot lacked", added)


# How a trial the Parquet record holds as ended is recorded in Optuna (a LOST one is failed there).
ENDED_STATES = {FINISHED: TrialState.COMPLETE, STOPPED: TrialState.PRUNED, ERRORED: TrialState.FAIL}


def add_ended_trials(study: optuna.Study, rows: Sequence[Mapping[str, Any]]) -> int:
    """Add to ``study`` the trials that ``rows`` (the Parquet trials table) hold as ended and Optuna
    does not hold at all, matched by their sampled params; return how many.

    A trial that starts and ends between two of Tune's snapshots, with the driver killed before the
    next, is stored in Parquet but unknown to Tune's snapshot, and to Optuna's when that is a
    snapshot too (``--dir s3://...``). Tune samples a trial in its place; its result is real and
    stays, and Optuna is told it, so that the two records agree and the sampler learns from it.
    """
    # Any state: a trial running in Optuna is one Tune's snapshot knows, and Tune tells its end.
    seen = {_key(trial.params) for trial in study.get_trials(deepcopy=False)}
    added = 0
    for row in rows:
        state = TrialState.FAIL if row.get("stop_reason") == LOST else ENDED_STATES.get(row.get("status"))
        if state is None or not row.get("params") or not row.get("distributions"):
            continue
        params = stored_params(row)
        if _key(params) in seen:
            continue
        distributions = stored_distributions(row)
        score, step = row.get("last_val_miou"), row.get("iterations")
        intermediate = {int(step): float(score)} if score is not None and step else {}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, state=state, intermediate_values=intermediate,
            value=float(score) if state == TrialState.COMPLETE and score is not None else None))
        seen.add(_key(params))
        added += 1
    return added


def _key(params: Mapping[str, Any]) -> tuple:
    """Sampled params as a set member (Optuna's values are numbers, strings, booleans or None):
    a resumed study of thousands of trials matches each row in one lookup."""
    return tuple(sorted(params.items()))


def outcome(result: dict | None, error: bool) -> tuple[TrialState, float | None]:
    """How a finished Tune trial is recorded in Optuna."""
    if error or (result and result.get("diverged")):
        return TrialState.FAIL, None
    if not result or METRIC not in result:
        return TrialState.PRUNED, None
    if int(result.get(TIME_ATTR, 0)) < int(result.get("max_iterations", 0)):
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, float(result[METRIC])


class PersistentASHA(ASHAScheduler):
    """ASHA on the trainer's iterations, whose rungs survive a driver restart.

    ``state_path`` None keeps the rungs in memory only: a simulated study, which has no driver to lose.
    ``fresh``: the scheduler of a study that has no rungs yet, which does not look for the file (in
    a bucket, two requests before the first trial starts); a copy unpickled on resume reads it.
    ``writes``, set by the driver's StoreCallback for each run, writes the rung file off Tune's loop,
    in order with the reports: Tune asks the scheduler about a result before it hands the result to
    the callbacks, so a result's rungs are queued, and stored, before its report, as when they were
    written on the loop (where every running trial waited for each write). Without it (a scheduler
    used on its own) the file is written at once.
    """

    def __init__(self, state_path: "str | Path | Location | None", *, fresh: bool = False, **kwargs: Any) -> None:
        super().__init__(time_attr=TIME_ATTR, metric=METRIC, mode="max", **kwargs)
        internals.check(self, "ASHAScheduler")
        # A Location (the study's, local or s3://...); it pickles as its URI, with no credentials.
        self._state_path = None if state_path is None else as_location(state_path)
        self._loaded = fresh
        self._stopped: set[str] = set()
        self._saved = ""  # the JSON last written: a result that moved no rung writes nothing
        self.writes: WriteBehind | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the scheduler with the experiment
        return {**self.__dict__, "writes": None, "_loaded": False}  # a restored one reads the rungs saved

    def _load(self) -> None:
        # Lazily: Tuner.restore unpickles this object without calling __init__.
        if self._loaded:
            return
        self._loaded = True
        if self._state_path is None:
            return
        state = as_location(self._state_path)  # a str in experiments pickled before Locations
        if not state.is_file():
            return
        saved = json.loads(state.read_text())
        # A trial stopped just before the driver died may come back from an older snapshot.
        self._stopped = set(saved.get("stopped", []))
        for bracket, rungs in zip(internals.asha_brackets(self), saved["brackets"]):
            for (milestone, recorded), (saved_milestone, saved_recorded) in zip(internals.bracket_rungs(bracket), rungs):
                if float(milestone) == float(saved_milestone):
                    recorded.update(saved_recorded)

    def _save(self) -> None:
        if self._state_path is None:
            return
        state = json.dumps({"brackets": [[[m, r] for m, r in internals.bracket_rungs(b)]
                                         for b in internals.asha_brackets(self)],
                            "stopped": sorted(self._stopped)})
        if state != getattr(self, "_saved", ""):  # getattr: a scheduler pickled before _saved existed
            path, writes = as_location(self._state_path), getattr(self, "writes", None)
            if writes is None:
                path.write_text(state)
            else:
                writes.submit(path.uri, lambda: path.write_text(state))
            self._saved = state

    def on_trial_add(self, tune_controller, trial) -> None:  # noqa: ANN001 - Ray's signature
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:  # noqa: ANN001
        self._load()
        trial_info = internals.asha_trial_info(self)
        if trial.trial_id not in trial_info:  # a trial restored mid-run
            trial_info[trial.trial_id] = internals.asha_brackets(self)[0]
        if result.get("diverged") or trial.trial_id in self._stopped:
            return self.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP:
            self._stopped.add(trial.trial_id)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:  # noqa: ANN001
        self._load()
        trial_info = internals.asha_trial_info(self)
        if trial.trial_id not in trial_info:
            return
        if result.get("diverged"):
            del trial_info[trial.trial_id]
            return
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def rungs(self) -> list[tuple[float, dict[str, float]]]:
        """(milestone, {trial id: score}) of the first bracket, lowest milestone first."""
        self._load()
        return [(m, dict(r)) for m, r in reversed(internals.bracket_rungs(internals.asha_brackets(self)[0]))]
