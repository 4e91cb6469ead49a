"""Optuna outcome of a Tune trial, and ASHA rungs that survive a restart (no Ray cluster needed)."""

import json
from types import SimpleNamespace

from optuna.trial import TrialState

from study.search import PersistentASHA, outcome
from study.spec import StudySpec, grace_after_ramp_up
from trainer.config import TrainConfig


def test_outcome_of_finished_stopped_diverged_and_failed_trials():
    assert outcome({"val_miou": 0.5, "iteration": 900, "max_iterations": 900}, False) == (TrialState.COMPLETE, 0.5)
    assert outcome({"val_miou": 0.5, "iteration": 300, "max_iterations": 900}, False)[0] == TrialState.PRUNED
    assert outcome({"val_miou": 0.0, "iteration": 30, "max_iterations": 900, "diverged": "nan"}, False)[0] == \
        TrialState.FAIL
    assert outcome(None, True)[0] == TrialState.FAIL


def _result(iteration: int, miou: float) -> dict:
    return {"iteration": iteration, "val_miou": miou, "max_iterations": 90}


def test_asha_rungs_survive_a_restart(tmp_path):
    path = tmp_path / "rungs.json"
    first = PersistentASHA(path, max_t=90, grace_period=10, reduction_factor=3)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for trial, miou in zip(trials[:3], (0.5, 0.6, 0.7)):
        first.on_trial_add(None, trial)
        assert first.on_trial_result(None, trial, _result(10, miou)) == "CONTINUE"
    assert path.is_file()

    # A fresh scheduler (the resumed driver) judges a new trial against the same rung.
    resumed = PersistentASHA(path, max_t=90, grace_period=10, reduction_factor=3)
    resumed.on_trial_add(None, trials[3])
    assert resumed.rungs()[0][1] == {"t0": 0.5, "t1": 0.6, "t2": 0.7}
    assert resumed.on_trial_result(None, trials[3], _result(10, 0.55)) == "STOP"
    forgetful = PersistentASHA(tmp_path / "other.json", max_t=90, grace_period=10, reduction_factor=3)
    forgetful.on_trial_add(None, trials[3])
    assert forgetful.on_trial_result(None, trials[3], _result(10, 0.55)) == "CONTINUE"


def test_a_new_studys_scheduler_reads_no_rung_file_and_its_pickled_copy_does(tmp_path):
    """``fresh``: no lookup of a file a new study cannot have; Tune's pickled copy (the resume's) reads it."""
    import pickle

    path = tmp_path / "rungs.json"
    kwargs = dict(max_t=90, grace_period=10, reduction_factor=3)
    earlier = PersistentASHA(path, **kwargs)
    earlier.on_trial_add(None, SimpleNamespace(trial_id="t0"))
    earlier.on_trial_result(None, SimpleNamespace(trial_id="t0"), _result(10, 0.7))
    fresh = PersistentASHA(path, fresh=True, **kwargs)
    assert fresh.rungs()[0][1] == {}
    restored = pickle.loads(pickle.dumps(fresh))
    assert restored.rungs()[0][1] == {"t0": 0.7}
    assert PersistentASHA(path, **kwargs).rungs()[0][1] == {"t0": 0.7}


def test_grace_before_the_ramp_up_is_moved_and_said():
    cfg = TrainConfig.from_dict({"ramp_up": 200, "eval_every": 100, "iterations": 900})
    assert grace_after_ramp_up(300, cfg) == (300, None)
    grace, note = grace_after_ramp_up(100, cfg)
    assert grace == 300 and "moved from 100 to 300" in note
    no_contrastive = cfg.replace(contrastive_weight_labeled=0.0, contrastive_weight_unlabeled=0.0)
    assert grace_after_ramp_up(100, no_contrastive) == (100, None)


def test_study_name_with_a_path_separator_is_refused():
    import pytest

    from trainer.config import ConfigError

    for name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError, match="study name"):
            StudySpec(name=name).validate()


def test_trial_threads_leave_room_for_data_workers():
    assert StudySpec(name="a", cpus_per_trial=4).base_config()["threads"] == 4
    spec = StudySpec(name="b", cpus_per_trial=6, fixed={"dataset": "voc", "workers": 4})
    assert spec.base_config()["threads"] == 2
    assert StudySpec(name="c", cpus_per_trial=2, fixed={"workers": 4}).base_config()["threads"] == 1
    assert StudySpec(name="d", cpus_per_trial=6, fixed={"workers": 4, "threads": 3}).base_config()["threads"] == 3


def test_the_private_ray_attributes_we_use_exist_and_a_renamed_one_fails_loudly(tmp_path):
    import optuna
    import pytest

    from search_spaces import get_space
    from study import ray_internals
    from study.search import DefineByRun, StudySearcher

    searcher = StudySearcher(space=DefineByRun(get_space("default")), metric="val_miou", mode="max",
                             sampler=optuna.samplers.RandomSampler(seed=0), study_name="internals")
    scheduler = PersistentASHA(tmp_path / "rungs.json", max_t=90, grace_period=10, reduction_factor=3)
    # Each access the study makes returns what it expects (the constructors check it too).
    assert isinstance(ray_internals.optuna_study(searcher), optuna.Study)
    assert ray_internals.optuna_trials(searcher) == {} and ray_internals.completed_trials(searcher) == set()
    (bracket,) = ray_internals.asha_brackets(scheduler)
    assert [m for m, _ in ray_internals.bracket_rungs(bracket)] == [90, 30, 10]
    assert ray_internals.asha_trial_info(scheduler) == {}

    del searcher._ot_trials  # what a Ray release that renamed it would look like
    with pytest.raises(ray_internals.RayInternalsError, match=r"OptunaSearch\._ot_trials is missing"):
        ray_internals.check(searcher, "OptunaSearch")
    bracket._rungs = tuple(bracket._rungs)
    with pytest.raises(ray_internals.RayInternalsError, match=r"ASHA bracket\._rungs is a tuple"):
        ray_internals.check(scheduler, "ASHAScheduler")


def test_asha_writes_its_rungs_only_when_a_result_changed_them(tmp_path, monkeypatch):
    """Each write is a request on an object store: a result between milestones writes nothing."""
    from study.location import Location

    written: list[str] = []
    real_write = Location.write_text
    monkeypatch.setattr(Location, "write_text", lambda self, text: (written.append(text), real_write(self, text)))
    asha = PersistentASHA(tmp_path / "rungs.json", max_t=90, grace_period=10, reduction_factor=3)
    trial = SimpleNamespace(trial_id="t0")
    asha.on_trial_add(None, trial)
    asha.on_trial_result(None, trial, _result(10, 0.5))  # the first rung
    assert len(written) == 1 and '"t0": 0.5' in written[0]
    asha.on_trial_result(None, trial, _result(20, 0.6))  # between 10 and 30: no rung moved
    assert len(written) == 1
    asha.on_trial_result(None, trial, _result(30, 0.7))  # the second rung
    assert len(written) == 2 and '"t0": 0.7' in written[1]
    assert (tmp_path / "rungs.json").read_text() == written[1]


def test_a_trial_told_before_the_driver_died_is_not_told_again_after_a_restore(tmp_path, caplog):
    """Tune's snapshot may predate a trial's end: the restored searcher sees the trial end again.
    Optuna keeps the first telling; nothing is warned (the rerun is bit-exact, so is its outcome)."""
    import logging

    import optuna

    from search_spaces import get_space
    from study.search import make_searcher

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = get_space("default")

    def searcher():
        return make_searcher(space, optuna.samplers.RandomSampler(seed=0), storage=optuna.storages.RDBStorage(url),
                             study_name="told", paper_point=False)

    first = searcher()
    first.suggest("a")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot, taken while "a" runs
    ended = {"val_miou": 0.5, "iteration": 90, "max_iterations": 90}
    first.on_trial_complete("a", ended)

    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    with caplog.at_level(logging.WARNING, logger="study.search"):
        restored.on_trial_complete("a", {**ended, "val_miou": 0.7})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (trial,) = optuna.load_study(study_name="told", storage=url).trials
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.5)


def test_the_searcher_makes_its_optuna_study_without_a_log_line(tmp_path):
    """Optuna logs "A new study created in RDB ..." amid the study's own output; the study says
    where its record is itself (run_study, for --storage)."""
    import logging

    import optuna

    from search_spaces import get_space
    from study.search import make_searcher

    level = optuna.logging.get_verbosity()
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    optuna_logger = logging.getLogger("optuna")  # Optuna's records do not reach the root logger
    optuna_logger.addHandler(handler)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default, which announces new studies
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
        make_searcher(get_space("default"), optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="q")
        make_searcher(get_space("default"), optuna.samplers.RandomSampler(seed=0))
        assert optuna.logging.get_verbosity() == optuna.logging.INFO  # left as it was
    finally:
        optuna_logger.removeHandler(handler)
        optuna.logging.set_verbosity(level)
    assert optuna.study.get_all_study_names(storage) == ["q"]
    assert [r.getMessage() for r in seen] == []


def test_a_restored_searcher_adds_the_ended_trials_its_optuna_snapshot_lacks(tmp_path):
    """A trial asked for after the snapshot and ended before the driver died is in the Parquet
    table but not in Optuna's snapshot (``--dir s3://``): the restored searcher adds it, as Parquet
    records it; a trial the snapshot knows, running, is left to Tune to tell; nothing is added twice."""
    import shutil

    import optuna

    from search_spaces import get_space
    from study.callbacks import searched_params
    from study.records import LOST
    from study.search import make_searcher
    from study.store import ResultStore

    space, folder = get_space("default"), tmp_path / "study"

    def searcher(db):
        return make_searcher(space, optuna.samplers.RandomSampler(seed=0), paper_point=False, study_name="s",
                             storage=optuna.storages.RDBStorage(f"sqlite:///{db}"), record=folder)

    live = searcher(tmp_path / "live.db")
    configs = {"a": live.suggest("a")}
    live.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot, "a" running
    shutil.copy(tmp_path / "live.db", tmp_path / "snapshot.db")  # Optuna's, taken with it
    configs.update({name: live.suggest(name) for name in "bcde"})  # after the snapshot; then the driver dies
    rows = [("a", "finished", None, 90, 0.6), ("b", "stopped", "asha", 30, 0.3), ("c", "errored", "raised", 10, None),
            ("d", "finished", None, 90, 0.7), ("e", "running", None, 10, 0.1)]
    ResultStore(folder, "s").write_trials([
        {"trial_id": name, "status": status, "stop_reason": reason, "iterations": iterations, "last_val_miou": score,
         **searched_params(space, configs[name])} for name, status, reason, iterations, score in rows])

    # The driver that resumes works on Optuna's snapshot (study/optuna_snapshot.py), at the same path.
    shutil.copy(tmp_path / "snapshot.db", tmp_path / "live.db")
    restored = searcher(tmp_path / "live.db")
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'live.db'}").trials
    by_params = {json.dumps(t.params, sort_keys=True): t for t in trials}
    assert len(trials) == 4 == len(by_params)  # a (running, Tune's), and b, c, d added; e is running
    state = {name: by_params[json.dumps(json.loads(searched_params(space, configs[name])["params"]), sort_keys=True)]
             for name in "abcd"}
    assert state["a"].state == TrialState.RUNNING
    assert (state["b"].state, state["b"].value, state["b"].intermediate_values) == (TrialState.PRUNED, None, {30: 0.3})
    assert state["c"].state == TrialState.FAIL
    assert (state["d"].state, state["d"].value) == (TrialState.COMPLETE, 0.7)

    # Once a resume has run, the lost trials it recorded are failed; a second restore adds only those.
    ResultStore(folder, "s").write_trials([{"trial_id": "e", "status": "stopped", "stop_reason": LOST,
                                            "iterations": 10, **searched_params(space, configs["e"])}])
    again = searcher(tmp_path / "live.db")
    again.restore(str(tmp_path / "searcher.pkl"))
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'live.db'}").trials
    assert len(trials) == 5 and [t.state for t in trials].count(TrialState.FAIL) == 2
