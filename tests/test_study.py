"""A whole study on tiny data, with a real local Ray, real Optuna storage and real Parquet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import torch

from conftest import tiny_overrides
from raw_parts import raw_rows, repeated
from study.location import as_location
from study.run import run_study
from study.spec import StudySpec, read_study_json
from study.store import ResultStore
from trainer.fast_path import choose_fast_path

TINY = tiny_overrides(iterations=12, eval_every=3, ramp_up=2, bank_lead=1, eval_model="student")
TINY.pop("iterations")

# The learning rate spreads tiny trials apart, so that ASHA has something to cut.
SPACE = """
paper_point: {lr: 0.01, bank_size: 16}
params:
  lr: {type: float, low: 0.0001, high: 0.3, log: true}
  bank_size: {type: int, low: 4, high: 64, log: true}
"""


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("spaces") / "tiny.yaml"
    path.write_text(SPACE)
    return str(path)


def _spec(name: str, space: str, **changes) -> StudySpec:
    values = dict(name=name, space=space, samples=8, max_iters=12, grace=3, reduction=2.0,
                  concurrency=2, fixed=dict(TINY), seed=0)
    values.update(changes)
    return StudySpec(**values)


def _optuna_study(folder: Path) -> optuna.Study:
    spec = read_study_json(folder)
    assert spec.study_id.startswith(spec.name + "-")  # unique in a shared storage
    return optuna.load_study(study_name=spec.study_id, storage=f"sqlite:///{folder / 'optuna.db'}")


def _tune_results(folder: Path) -> set[tuple[str, int, float]]:
    """(trial id, iteration, val mIoU) of every result Tune logged for every trial."""
    rows = set()
    for path in (folder / "tune").rglob("result.json"):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            if "val_miou" in result:
                rows.add((result["trial_id"], int(result["iteration"]), round(result["val_miou"], 9)))
    return rows


@pytest.fixture(scope="module")
def asha_study(ray_local, tmp_path_factory, space_file):
    root = tmp_path_factory.mktemp("studies")
    # compact=False: the report parts stay as the driver wrote them, so a row written twice shows.
    # checkpoint_every: an hour, so that no trial of seconds takes a checkpoint.
    from ray.tune.analysis import experiment_analysis

    from study.location import Location

    fetch, write_text = experiment_analysis.ExperimentAnalysis._fetch_trial_dataframe, Location.write_text

    def write_and_note(self: Location, text: str) -> None:
        if self.name == "asha_rungs.json":
            RUNG_WRITERS.append(threading.current_thread().name)
        write_text(self, text)

    with pytest.MonkeyPatch.context() as patch:  # what Tune's closing read reads; who writes the rungs
        patch.setattr(experiment_analysis.ExperimentAnalysis, "_fetch_trial_dataframe",
                      lambda self, trial: CLOSING_READS.append(trial.trial_id) or fetch(self, trial))
        patch.setattr(Location, "write_text", write_and_note)
        summary = run_study(_spec("asha", space_file, checkpoint_every=3600), root, progress=False,
                            say=lambda _: None, compact=False)
    return root / "asha", summary


CLOSING_READS: list[str] = []  # the trials whose result.json Tune read at the end of the fixture's fit
RUNG_WRITERS: list[str] = []  # the thread of each write of the fixture's asha_rungs.json


def test_the_rung_file_is_written_off_tunes_loop_by_the_drivers_writer_also_after_a_restore(asha_study):
    """Every write of asha_rungs.json went to the StoreCallback's writer thread (Tune's loop, the
    main thread, never waited on one), and a restored Tuner's callback writes for the scheduler
    that Tune runs and hurries the ResultLog that Tune runs: all come out of one pickle, so they
    are still linked."""
    from study.callbacks import StoreCallback
    from study.run import _store_callback, _tuner

    folder, _ = asha_study
    assert len(RUNG_WRITERS) >= 4 and set(RUNG_WRITERS) == {"study-write-behind"}
    spec = read_study_json(folder)
    tuner = _tuner(spec, as_location(folder), grace=3, resume=True, progress=False)
    callback = _store_callback(tuner)
    assert isinstance(callback, StoreCallback)
    # The scheduler the restored Tuner hands to Tune (Ray's private attribute: a test may look).
    assert callback.rungs is tuner._local_tuner._tune_config.scheduler
    assert callback.rungs.writes is None  # unpickled without a writer, until this run's setup
    callback.setup()
    assert callback.rungs.writes is callback.writes
    # The ResultLog whose writer a snapshot starts with the callback's is the one Tune runs.
    from study import ray_internals
    from study.result_log import ResultLog

    logs = [c for c in ray_internals.tuner_callbacks(tuner) if isinstance(c, ResultLog)]
    assert len(logs) == 1 and callback.result_log is logs[0]


def test_asha_stops_trials_and_optuna_records_them_as_pruned(asha_study):
    folder, summary = asha_study
    assert summary["trials"] == 8 and summary["best"] is not None
    study = _optuna_study(folder)
    states = [t.state for t in study.trials]
    assert len(states) == 8
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete
    for trial in pruned:
        assert trial.intermediate_values and max(trial.intermediate_values) < 12
    for trial in complete:
        assert trial.intermediate_values[12] == trial.value
    # the paper's point is evaluated first
    assert study.trials[0].params == {"lr": 0.01, "bank_size": 16}


def test_parquet_agrees_with_what_tune_reported(asha_study):
    folder, _ = asha_study
    reports = raw_rows(folder)  # every part as written, duplicates included
    assert len(list((folder / "results" / "reports").rglob("*.parquet"))) > 1  # not compacted
    assert not repeated(reports, "trial_id", "iteration")
    stored = {(r["trial_id"], r["iteration"], round(r["val_miou"], 9)) for r in reports}
    assert stored == _tune_results(folder)
    # No TensorBoard writer per trial (it held a file open for the whole study): Parquet is the record.
    assert not list((folder / "tune").rglob("events.out.tfevents*"))
    trials = raw_rows(folder, "trials")
    assert not repeated(trials, "trial_id")
    assert len(trials) == 8
    statuses = {t["status"] for t in trials}
    assert statuses <= {"finished", "stopped"} and "stopped" in statuses
    for t in trials:
        mine = [r for r in reports if r["trial_id"] == t["trial_id"]]
        assert t["best_val_miou"] == pytest.approx(max(r["val_miou"] for r in mine))
        assert t["iterations"] == max(r["iteration"] for r in mine)


def test_a_trial_checkpoints_only_once_its_period_has_passed(asha_study):
    folder, _ = asha_study
    assert len(_tune_results(folder)) > 8  # the trials reported, several times each
    assert not list((folder / "tune").rglob("checkpoint_*"))  # none ran an hour: none checkpointed


def test_tunes_own_tools_read_the_trials_results(asha_study):
    """ResultLog writes result.json and params.json where Tune's ExperimentAnalysis looks."""
    pytest.importorskip("pandas", reason="pandas is missing (pip install -e '.[test]')")
    from ray.tune import ExperimentAnalysis

    folder, _ = asha_study
    analysis = ExperimentAnalysis(str(folder / "tune" / "asha"))
    frames = analysis.trial_dataframes
    reports = raw_rows(folder)
    assert len(frames) == 8
    for trial in analysis.trials:
        mine = sorted(r["iteration"] for r in reports if r["trial_id"] == trial.trial_id)
        assert sorted(frames[trial.trial_id]["iteration"]) == mine
        assert trial.config and set(trial.config) >= {"lr", "bank_size"}
    assert analysis.get_best_config(metric="val_miou", mode="max") in [t.config for t in analysis.trials]


def test_the_study_leaves_tunes_closing_read_of_the_results_undone(asha_study, monkeypatch):
    """At the end of fit Tune reads every trial's result.json into a ResultGrid that the study
    never uses (three round trips a trial on an object store). run_study's fit read none
    (CLOSING_READS, counted by the fixture); outside the context Tune reads them as before."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.analysis import experiment_analysis

    from study import ray_internals

    folder, _ = asha_study
    assert CLOSING_READS == []
    path = str(folder / "tune" / "asha")
    read = ExperimentAnalysis(path).trial_dataframes
    assert len(read) == 8 and all(not frame.empty for frame in read.values())

    def no_read(self, trial):  # noqa: ANN001, ANN202 - Tune's signature
        raise AssertionError(f"{trial} was read")

    monkeypatch.setattr(experiment_analysis.ExperimentAnalysis, "_fetch_trial_dataframe", no_read)
    with ray_internals.tune_results_left_unread():
        unread = ExperimentAnalysis(path)
    assert set(unread.trial_dataframes) == set(read) and all(f.empty for f in unread.trial_dataframes.values())
    assert {t.trial_id: t.last_result["iteration"] for t in unread.trials} == {
        trial_id: frame["iteration"].max() for trial_id, frame in read.items()}
    assert ExperimentAnalysis._fetch_trial_dataframes.__name__ == "_fetch_trial_dataframes"  # Tune's own again


def test_parquet_is_readable_by_pandas_and_duckdb(asha_study):
    duckdb = pytest.importorskip("duckdb")
    pandas = pytest.importorskip("pandas")
    folder, _ = asha_study
    frame = pandas.read_parquet(folder / "results" / "reports")
    assert {"trial_id", "iteration", "val_miou", "iou", "bank_fill", "config.bank_size"} <= set(frame.columns)
    count = duckdb.sql(f"select count(*) from read_parquet('{folder}/results/reports/**/*.parquet')").fetchall()[0][0]
    assert count == len(frame)


def test_bad_space_file_fails_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  bank_sise: {type: int, low: 1, high: 4}\n")
    result = subprocess.run([sys.executable, "-m", "study", "run", "--space", str(bad), "--name", "x",
                             "--dir", str(tmp_path / "studies")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "bank_sise" in result.stderr and "bank_size" in result.stderr
    assert not (tmp_path / "studies" / "x").exists()


def test_every_row_carries_its_compute(asha_study):
    folder, _ = asha_study
    store = ResultStore(folder, "asha")
    reports, trials = store.reports().to_pylist(), store.trials().to_pylist()
    assert {(r["device_type"], r["devices"]) for r in reports} == {("cpu", 1.0)}  # --cpus-per-trial 1, no GPU
    assert all(r["test_miou"] is None for r in reports)  # eval_test is off: no test score leaks into a study
    for t in trials:
        last = max((r for r in reports if r["trial_id"] == t["trial_id"]), key=lambda r: r["iteration"])
        assert t["train_seconds"] == last["train_seconds"] > 0 and t["device_type"] == "cpu"
    # amp and channels_last are 'auto' in the study: what they became on this CPU is in every row.
    took = choose_fast_path("auto", "auto", torch.device("cpu"))
    assert {(r["config.amp"], r["config.channels_last"]) for r in reports} == {("auto", "auto")}
    assert {(r["precision"], r["channels_last"]) for r in reports + trials} == {(took.precision, took.channels_last)}


def test_points_are_evaluated_first_after_the_paper_point(ray_local, tmp_path, space_file):
    point = {"lr": 0.05, "bank_size": 8}
    spec = _spec("points", space_file, samples=3, max_iters=3, grace=3, scheduler="fifo", points=[point])
    run_study(spec, tmp_path, progress=False, say=lambda _: None)
    # Optuna numbers trials in the order the searcher asked for them (two start at once: their start
    # times say nothing of that order).
    asked = sorted(_optuna_study(tmp_path / "points").trials, key=lambda t: t.number)
    assert [t.params for t in asked[:2]] == [{"lr": 0.01, "bank_size": 16}, point]
    stored = [json.loads(t["params"]) for t in ResultStore(tmp_path / "points", "points").trials().to_pylist()]
    assert point in stored and len(stored) == 3
    assert read_study_json(tmp_path / "points").points == [point]  # a resume evaluates the same points
