"""Tune's per-trial files written where the study lives, locally and in a bucket (moto's server)."""

from __future__ import annotations

import json

import pytest
from ray import cloudpickle

from study.location import parse
from study.result_log import ResultLog


class _Trial:
    """What ResultLog reads of a Tune trial: its id, config, storage path, status and staging folder."""

    def __init__(self, trial_id: str, path: str, status: str = "RUNNING", local_path: str | None = None) -> None:
        self.trial_id, self.path, self.status, self.local_path = trial_id, path, status, local_path
        self.config = {"lr": 0.01, "bank_size": 256, "contrastive_loss": "paper"}


@pytest.fixture(params=["local", "s3"])
def experiment(request, tmp_path):
    if request.param == "local":
        return parse(str(tmp_path / "tune" / "exp"))
    _, make_bucket = request.getfixturevalue("s3_server")
    return parse(make_bucket("result-log").replace("s3://result-log", "s3://result-log/study/tune/exp"))


def test_each_trial_gets_tunes_files_in_its_folder_and_a_resumed_driver_appends(experiment):
    log = ResultLog(experiment)
    trial = _Trial("t1", f"{experiment.fs_path}/run_trial_t1_1/")
    folder = experiment / "run_trial_t1_1"
    log.on_trial_start(0, [], trial)
    log.flush()
    assert json.loads((folder / "params.json").read_text()) == trial.config
    assert not (folder / "params.pkl").exists()  # a request a trial, read by nothing (result_log.py)

    for iteration in (3, 6):
        log.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": iteration, "val_miou": iteration / 10})
    log.flush()
    first = (folder / "result.json").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in first] == [3, 6]

    resumed = cloudpickle.loads(cloudpickle.dumps(log))  # as Tune restores its callbacks
    resumed.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": 9, "val_miou": 0.9})
    resumed.flush()
    lines = (folder / "result.json").read_text().splitlines()
    assert lines[:2] == first and json.loads(lines[2]) == {"trial_id": "t1", "iteration": 9, "val_miou": 0.9}

    resumed.on_trial_complete(0, [], trial)
    assert resumed._lines == {}  # nothing of an ended trial stays in the driver
    other = _Trial("t2", f"{experiment.fs_path}/run_trial_t2_2")
    resumed.on_trial_result(0, [], other, {"trial_id": "t2", "iteration": 3, "val_miou": 0.1})
    resumed.flush()
    assert len((experiment / "run_trial_t2_2" / "result.json").read_text().splitlines()) == 1


def test_a_failed_write_warns_and_the_next_result_writes_every_line(tmp_path, monkeypatch, caplog):
    """Tune's log is not the study's record: a write that fails must not end the study."""
    from study.location import Location

    experiment = parse(str(tmp_path / "tune" / "exp"))
    log = ResultLog(experiment)
    trial = _Trial("t1", f"{experiment.fs_path}/run_trial_t1_1")
    real_write, failing = Location.write_text, [True]

    def flaky(self, text):
        if failing.pop() if failing else False:
            raise OSError("the object store refused")
        real_write(self, text)

    monkeypatch.setattr(Location, "write_text", flaky)
    with caplog.at_level("WARNING"):
        log.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": 3})
        log.flush()
    assert "could not write result.json of trial t1" in caplog.text
    log.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": 6})
    log.flush()
    lines = (experiment / "run_trial_t1_1" / "result.json").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [3, 6]


def test_a_fresh_driver_does_not_look_for_stored_lines_and_a_resumed_one_does(tmp_path, monkeypatch):
    """Each lookup is requests on an object store: a study this driver started has nothing stored."""
    from study.location import Location

    experiment = parse(str(tmp_path / "tune" / "exp"))
    looked: list[str] = []
    real_exists = Location.exists
    monkeypatch.setattr(Location, "exists", lambda self: (looked.append(self.name), real_exists(self))[1])
    log = ResultLog(experiment)
    trial = _Trial("t1", f"{experiment.fs_path}/run_trial_t1_1")
    log.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": 3})
    log.flush()
    assert looked == []
    resumed = cloudpickle.loads(cloudpickle.dumps(log))
    resumed.on_trial_result(0, [], trial, {"trial_id": "t1", "iteration": 6})
    assert looked == ["result.json"]


def test_an_ended_trials_empty_staging_folder_is_removed_and_a_resumed_driver_sweeps_the_rest(tmp_path):
    """Tune uploads its staging area at every snapshot, looking up each folder in it: an ended
    trial's empty folder goes; one with files (an errored trial's error.txt) and a running one stay."""
    experiment = parse(str(tmp_path / "tune" / "exp"))
    staging = tmp_path / "staging"
    trials = {}
    for trial_id, status in (("ended", "TERMINATED"), ("running", "RUNNING"), ("errored", "ERROR"),
                             ("restored", "TERMINATED")):
        (staging / trial_id).mkdir(parents=True)
        trials[trial_id] = _Trial(trial_id, f"{experiment.fs_path}/run_{trial_id}", status, str(staging / trial_id))
    (staging / "errored" / "error.txt").write_text("Failure # 1")

    log = ResultLog(experiment)
    log.on_trial_complete(0, [], trials["ended"])
    log.on_trial_error(0, [], trials["errored"])
    assert sorted(p.name for p in staging.iterdir()) == ["errored", "restored", "running"]

    resumed = cloudpickle.loads(cloudpickle.dumps(log))
    resumed.on_step_begin(0, list(trials.values()))
    assert sorted(p.name for p in staging.iterdir()) == ["errored", "running"]
