"""The driver's writes off Tune's loop: in order, the latest of a key, errors raised on the driver's
thread, and a snapshot of the experiment that waits for the reports it names."""

from __future__ import annotations

import threading
import time

import pytest

from study.write_behind import WriteBehind


def test_writes_are_done_in_order_and_a_waiting_key_takes_its_latest_write():
    writes, done, started, release = WriteBehind(), [], threading.Event(), threading.Event()
    writes.submit("first", lambda: (started.set(), release.wait(10), done.append("first")))
    started.wait(10)  # the thread is busy: what follows waits
    writes.submit("trials", lambda: done.append("trials v1"))
    writes.submit("report", lambda: done.append("report"))
    writes.submit("trials", lambda: done.append("trials v2"))  # in v1's place, v1 never written
    release.set()
    writes.flush()
    assert done == ["first", "trials v2", "report"]


def test_an_adjacent_only_write_replaces_a_waiting_one_only_if_nothing_came_between():
    """The trials table saying a trial ended must not be written before that trial's last report:
    a rewrite handed over after a report stays after it."""
    writes, done, started, release = WriteBehind(), [], threading.Event(), threading.Event()
    writes.submit("first", lambda: (started.set(), release.wait(10), done.append("first")))
    started.wait(10)
    writes.submit("trials", lambda: done.append("trials v1"), adjacent=True)
    writes.submit("trials", lambda: done.append("trials v2"), adjacent=True)  # just after: replaces v1
    writes.submit("report", lambda: done.append("report"))
    writes.submit("trials", lambda: done.append("trials v3"), adjacent=True)  # a report between: its own place
    writes.submit("trials", lambda: done.append("trials v4"), adjacent=True)  # replaces v3
    release.set()
    writes.flush()
    assert done == ["first", "trials v2", "report", "trials v4"]


def test_items_appended_one_after_another_are_written_together_and_nothing_is_reordered():
    writes, done, started, release = WriteBehind(), [], threading.Event(), threading.Event()
    writes.submit("first", lambda: (started.set(), release.wait(10), done.append("first")))
    started.wait(10)
    part = lambda rows: done.append(tuple(rows))  # noqa: E731 - one part of report rows
    writes.append("reports", "r1", part)
    writes.append("reports", "r2", part)  # just after r1: the same part
    writes.submit("trials", lambda: done.append("trials"), adjacent=True)
    writes.append("reports", "r3", part)  # the trials table came between: a part of its own
    writes.submit("rungs", lambda: done.append("rungs"))
    writes.append("reports", "r4", part)
    release.set()
    writes.flush()
    writes.append("reports", "r5", part)  # the part before has been written: a new one
    writes.flush()
    assert done == ["first", ("r1", "r2"), "trials", ("r3",), "rungs", ("r4",), ("r5",)]


def test_an_idle_writer_lingers_for_the_rest_of_a_step_but_a_flush_does_not_wait_for_it():
    writes, done = WriteBehind(linger_s=3600), []
    writes.submit("trials", lambda: done.append("trials v1"), adjacent=True)
    time.sleep(0.2)  # a step of Tune's loop goes on: an hour's linger has not let the writer start
    assert done == []
    writes.submit("trials", lambda: done.append("trials v2"), adjacent=True)
    flushing = threading.Thread(target=writes.flush)
    flushing.start()
    flushing.join(timeout=60)  # a flush that waited for the linger would take an hour
    assert not flushing.is_alive() and done == ["trials v2"]

    soon, later = WriteBehind(linger_s=0.05), []
    soon.submit("report", lambda: later.append("report"))
    deadline = time.monotonic() + 30  # only a wait: unflushed, the write still comes after the linger
    while not later and time.monotonic() < deadline:
        time.sleep(0.01)
    assert later == ["report"]


def _done_soon(done: list, expected: list) -> bool:
    deadline = time.monotonic() + 30  # only a wait: a lingering write would take an hour
    while done != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return done == expected


def test_a_hurried_writer_starts_at_once_without_the_caller_waiting_and_lingers_again_after():
    writes, done, release = WriteBehind(linger_s=3600), [], threading.Event()
    writes.submit("rungs", lambda: (release.wait(60), done.append("rungs")))
    writes.hurry()  # returns while the write is held: the caller does not wait for it
    assert done == []
    release.set()
    assert _done_soon(done, ["rungs"])
    writes.submit("trials", lambda: done.append("trials"))  # a later moment: it lingers as before
    time.sleep(0.2)
    assert done == ["rungs"]
    writes.flush()
    assert done == ["rungs", "trials"]


def test_a_snapshot_starts_the_result_logs_writes_with_the_stores(tmp_path):
    """Tune asks the StoreCallback first: it starts the ResultLog's writer too, so that the snapshot
    waits for the slower of the two writers, not for one after the other."""
    from study.callbacks import StoreCallback
    from study.result_log import ResultLog
    from study.spec import StudySpec

    log = ResultLog(tmp_path / "tune")
    log._writes, done = WriteBehind(linger_s=3600), []
    log._writes.submit("result.json", lambda: done.append("result.json"))
    StoreCallback(tmp_path, StudySpec(name="s"), show_progress=False, result_log=log).get_state()
    assert _done_soon(done, ["result.json"])  # with no call to the log's own get_state


def test_the_drivers_last_flush_waits_for_the_result_logs_writes_too(tmp_path):
    """When ``fit`` raises past its end, Tune calls no ``on_experiment_end``: the driver's flush of
    the StoreCallback is the last chance for Tune's result files still waiting."""
    from study.callbacks import StoreCallback
    from study.result_log import ResultLog
    from study.spec import StudySpec

    log = ResultLog(tmp_path / "tune")
    log._writes, done = WriteBehind(linger_s=3600), []
    log._writes.submit("result.json", lambda: (time.sleep(0.2), done.append("result.json")))
    StoreCallback(tmp_path, StudySpec(name="s"), show_progress=False, result_log=log).flush()
    assert done == ["result.json"]


def test_a_failed_write_is_raised_on_the_next_call_and_the_writes_after_it_are_done():
    writes, done, handed = WriteBehind(), [], threading.Event()

    def refused():
        handed.wait(60)  # fails only once "b" is handed over: the next call is the flush, always
        raise OSError("the bucket refused")

    writes.submit("a", refused)
    writes.submit("b", lambda: done.append("b"))
    handed.set()
    with pytest.raises(OSError, match="the bucket refused"):
        writes.flush()
    assert done == ["b"]
    writes.flush()  # raised once
    writes.submit("c", refused)  # a failure after a flush: the next call raises it
    with pytest.raises(OSError, match="the bucket refused"):
        writes.flush()


def test_tunes_snapshot_waits_for_the_reports_handed_over_before_it(tmp_path, monkeypatch):
    """``get_state`` runs before Tune uploads its snapshot: a resume from that snapshot must find
    every report of the results it names already stored."""
    from study.callbacks import StoreCallback
    from study.spec import StudySpec
    from study.store import ResultStore
    from test_store import _result, _Trial

    real_append = ResultStore.append_reports
    monkeypatch.setattr(ResultStore, "append_reports", lambda self, rows: (time.sleep(0.3), real_append(self, rows))[1])
    spec = StudySpec(name="s")
    trial = _Trial("t", dict(spec.search_space.paper_point))
    driver = StoreCallback(tmp_path, spec, show_progress=False)
    driver.on_trial_start(0, [], trial)
    driver.on_trial_result(0, [], trial, _result(100, 0.4))
    assert driver.get_state() is None  # nothing of its own to save
    assert ResultStore(tmp_path, "s").reports().column("iteration").to_pylist() == [100]
