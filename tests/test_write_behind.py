"""The driver's writes off Tune's loop: in order, the latest of a key, errors raised on the driver's
thread, and a snapshot of the experiment that waits for the reports it names."""

from __future__ import annotations

import json
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


def test_a_failed_write_is_raised_on_the_next_call_and_the_writes_after_it_are_done():
    writes, done = WriteBehind(), []

    def refused():
        raise OSError("the bucket refused")

    writes.submit("a", refused)
    writes.submit("b", lambda: done.append("b"))
    with pytest.raises(OSError, match="the bucket refused"):
        writes.flush()
    assert done == ["b"]
    writes.flush()  # raised once


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


def test_writes_wait_for_the_window_or_a_flush_and_a_pass_goes_by_rank():
    """A window gathers the writes of a busy second; at its end (here: the flush) the trials row
    goes first, the reports next, ASHA's rungs last, whatever the order they came in."""
    writes, done = WriteBehind(delay_s=3600), []
    writes.submit("rungs", lambda: done.append("rungs v1"), rank=2)
    writes.submit("reports", lambda: done.append("reports"), rank=1)
    writes.submit("trials", lambda: done.append("trials"), rank=0)
    writes.submit("rungs", lambda: done.append("rungs v2"), rank=2)
    time.sleep(0.2)
    assert done == []  # the window is an hour: nothing written before the flush
    writes.flush()
    assert done == ["trials", "reports", "rungs v2"]


def test_a_window_ends_by_itself():
    writes, written = WriteBehind(delay_s=0.05), threading.Event()
    writes.submit("a", written.set)
    assert written.wait(10)


def test_a_driver_gathers_reports_into_one_part_and_stores_them_before_the_rungs_that_score_them(tmp_path):
    """Three results in one window are one part; ASHA's rungs, written by the driver's callback, land
    after the reports of the results they record (a resumed ASHA that knows a trial stopped never
    runs it to that result again)."""
    from types import SimpleNamespace

    from raw_parts import raw_rows
    from study.callbacks import StoreCallback
    from study.location import Location
    from study.search import PersistentASHA
    from study.spec import StudySpec
    from test_store import _result, _Trial

    spec = StudySpec(name="s")
    trial = _Trial("t", dict(spec.search_space.paper_point))
    scheduler = PersistentASHA(tmp_path / "asha_rungs.json", max_t=900, grace_period=100, reduction_factor=3)
    driver = StoreCallback(tmp_path, spec, show_progress=False, write_every_s=3600)
    driver.keep_rungs(scheduler)
    order: list[str] = []
    real_write = Location.write_bytes

    def write_bytes(self, data):  # every file of the study goes through here
        order.append(self.name.split("-")[0])
        return real_write(self, data)

    scheduler.on_trial_add(None, SimpleNamespace(trial_id="t"))
    driver.on_trial_start(0, [], trial)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Location, "write_bytes", write_bytes)
        for iteration, miou in ((100, 0.4), (200, 0.5), (300, 0.6)):
            assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="t"), _result(iteration, miou)) == "CONTINUE"
            driver.on_trial_result(0, [], trial, _result(iteration, miou))
        assert order == [] and not (tmp_path / "asha_rungs.json").exists()  # nothing on Tune's loop
        driver.get_state()  # Tune's snapshot
    assert order == ["trials.parquet", "part", "asha_rungs.json"]
    assert sorted(r["iteration"] for r in raw_rows(tmp_path)) == [100, 200, 300]
    rungs = json.loads((tmp_path / "asha_rungs.json").read_text())
    assert rungs["brackets"][0][-1] == [100, {"t": 0.4}] and rungs["brackets"][0][-2] == [300, {"t": 0.6}]
