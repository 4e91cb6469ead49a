"""The driver's view of a running study: every report into Parquet, and a progress line.

``StoreCallback`` runs on the driver, called by Ray Tune for each trial event. Reports are
written as they arrive (one atomic part for those that arrive together, compacted at the end),
and all of them are stored before Tune saves the snapshot that a resume starts from, so a killed
driver loses nothing that the resumed trials do not report again; the store drops any
(trial, iteration) it holds already, so a resumed driver never writes a row twice.

The trials table is rewritten at once when a trial's status changes (started, ended,
errored, retried), and for progress alone (iterations, scores) once ``progress_every_s``
has passed since the last write (checked at every step of Tune's loop, and when ``fit``
ends): on an object store each rewrite is a request, and the progress it holds is in the
reports already. A driver killed in between leaves a row behind its reports, and the
driver that resumes takes the progress from them (``_catch_up_with_reports``).

Both writes are done off Tune's loop, in order (study/write_behind.py), and so are the rung file
writes of the study's ASHA scheduler (``rungs``), queued before the report of the same result;
``get_state``, which Tune calls at each snapshot of the experiment, waits for them all. The
writer lingers ``WRITES_LINGER_S`` when it was idle, so that the writes of a moment go together.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search_spaces import SearchSpace
from study.records import (ERRORED, FINISHED, INTERRUPTED, LOST, METRIC, RUNNING, STATUSES, STOPPED,
                           config_columns, report_row)
from study.location import Location, as_location
from study.spec import StudySpec
from study.store import ResultStore
from study.write_behind import WRITES_LINGER_S, WriteBehind

if TYPE_CHECKING:
    from study.result_log import ResultLog
    from study.search import PersistentASHA


class StoreCallback(Callback):
    def __init__(self, folder: "Location | Path", spec: StudySpec, show_progress: bool = True,
                 stop_reason: str = "asha: below the rung's cutoff", progress_every_s: float = 5.0,
                 rungs: "PersistentASHA | None" = None, result_log: "ResultLog | None" = None) -> None:
        self.folder, self.spec, self.study = as_location(folder), spec, spec.name
        # The PersistentASHA of the study, whose rung file this callback's writer writes. Tune
        # pickles it in one piece with this callback, so a restored Tuner's are the same object.
        self.rungs = rungs
        # The study's ResultLog (Tune's result files), whose writer a snapshot starts with this one's.
        self.result_log = result_log
        self.stop_reason = stop_reason
        self.show_progress = show_progress
        self.progress_every_s = progress_every_s
        self._written_at = float("-inf")  # when trials.parquet was last written (monotonic)
        self._unwritten = False  # progress that is not in trials.parquet yet
        self._store: ResultStore | None = None
        self._writes: WriteBehind | None = None
        self._bar: Any = None
        self._trials: dict[str, dict[str, Any]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        # Set by the driver for each run (not pickled): whether Ctrl-C ended it (study/interrupt.py).
        self.ctrl_c: Any = None

    # Tune pickles callbacks with the experiment: leave the open bar, the store, the writer's
    # thread and this run's Ctrl-C behind.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_bar"], state["_store"], state["_writes"], state["ctrl_c"] = None, None, None, None
        state["_written_at"] = float("-inf")  # another process's clock
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Defaults first: an experiment pickled before these existed.
        self.__dict__.update({"ctrl_c": None, "progress_every_s": 5.0, "_written_at": float("-inf"),
                              "_unwritten": False, "_writes": None, "rungs": None, "result_log": None, **state})

    @property
    def writes(self) -> WriteBehind:
        """The writer of the store's files: ``writes.flush()`` waits until all handed over are written."""
        if self._writes is None:
            self._writes = WriteBehind(linger_s=WRITES_LINGER_S)
        return self._writes

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            self._store = ResultStore(self.folder, self.study)
            rows = self._store.trials().to_pylist()
            for row in rows:  # a resumed driver continues the table
                self._trials.setdefault(row["trial_id"], row)
            if rows:
                self._catch_up_with_reports()
        return self._store

    def _catch_up_with_reports(self) -> None:
        """A driver killed between storing a report and rewriting the trials table leaves the row
        behind its reports, and a resumed trial that ASHA stops at its first replayed result never
        reports that far again: the row takes its progress from the stored reports."""
        reports = self._store.reports().select(["trial_id", "iteration", METRIC]).to_pylist()
        reached: dict[str, dict[str, Any]] = {}
        for report in reports:
            seen = reached.setdefault(report["trial_id"], {"iteration": -1, "best": float("-inf")})
            if report["iteration"] > seen["iteration"]:
                seen.update(iteration=report["iteration"], last=report[METRIC])
            if report[METRIC] is not None:
                seen["best"] = max(seen["best"], report[METRIC])
        for trial_id, seen in reached.items():
            row = self._trials.get(trial_id)
            if row is not None and seen["iteration"] > (row.get("iterations") or 0):
                row.update(iterations=seen["iteration"], last_val_miou=seen["last"],
                           best_val_miou=max(seen["best"], row.get("best_val_miou") or float("-inf")))

    # --- Tune's hooks -----------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        if self.rungs is not None:  # once per run: a fresh writer, as the scheduler's was left unpickled
            self.rungs.writes = self.writes

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._trial_row(trial)
        row.update(status=RUNNING, started=row.get("started") or _now(), ended=None, stop_reason=None)
        self._write_trials()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if METRIC not in result:
            return
        node = str(result.get("node") or result.get("node_ip") or socket.gethostname())
        time_total_s = float(result.get("time_total_s", 0.0))
        report = report_row(self.study, trial.trial_id, result, self._config(trial), node, time_total_s)
        # One part for the reports handed over one after another (nothing in between to reorder).
        self.writes.append("reports", report, self.store.append_reports)
        row = self._trial_row(trial)
        status = row.get("status")
        row["node"] = node
        if row.get("status") == INTERRUPTED:  # resumed: it may report before Tune calls on_trial_start
            row.update(status=RUNNING, stop_reason=None)
        # A resumed trial replays from its checkpoint: never move its progress backwards.
        latest = int(result["iteration"]) >= (row.get("iterations") or 0)
        if latest:
            row.update(iterations=int(result["iteration"]), wall_seconds=time_total_s,
                       **{k: result.get(k) for k in ("train_seconds", "devices", "device_type", "precision",
                                                     "channels_last")})
        if result.get("diverged"):
            row.update(status=ERRORED, stop_reason=f"diverged: {result['diverged']}", error=result["diverged"])
        else:
            if latest:
                row["last_val_miou"] = float(result[METRIC])
            row["best_val_miou"] = max(float(result[METRIC]), row.get("best_val_miou") or float("-inf"))
        self._write_trials(progress_only=row.get("status") == status)
        self._show()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._trial_row(trial)
        if row.get("status") != ERRORED:
            finished = (row.get("iterations") or 0) >= int(self._config(trial)["iterations"])
            row["status"] = FINISHED if finished else STOPPED
            row["stop_reason"] = None if finished else self.stop_reason
        row["ended"] = _now()
        self._write_trials()
        self._show()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._trial_row(trial)
        row.update(status=ERRORED, stop_reason="raised", error=_error_text(trial), ended=_now())
        self._write_trials()
        self._show()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune restarts the trial from its last checkpoint (FailureConfig); count it, it is running again.
        row = self._trial_row(trial)
        row.update(retries=(row.get("retries") or 0) + 1, status=RUNNING,
                   error=f"retrying after: {_error_text(trial)}")
        self._write_trials()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Held-back progress waits for the period, not for the next event (minutes apart on a GPU).
        if self._unwritten:
            self._write_trials(progress_only=True)

    def get_state(self) -> None:
        # Tune snapshots the experiment: what it names must be stored first (nothing else to save).
        # The ResultLog's writer starts now too (its own get_state, next, waits for it): the snapshot
        # waits for the slower of the two, not for one after the other.
        if self.result_log is not None:
            self.result_log.hurry()
        self.writes.flush()

    def flush(self) -> None:
        """Write progress held back, if any, and wait for every write, the ResultLog's too: the
        driver calls it when ``fit`` ends, however it ends."""
        if self._unwritten:
            self._write_trials()
        self.get_state()  # both writers started, this one's waited for
        if self.result_log is not None:
            self.result_log.flush()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Trials that Tune ended without a completion event: cut by Ctrl-C (Tune saved them, and
        # --resume continues them), or by the time budget, or lost with a driver that died.
        interrupted = self.ctrl_c is not None and self.ctrl_c.pressed
        self.mark_unfinished({t.trial_id for t in trials} if interrupted else set())
        self.flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def mark_unfinished(self, resumable: set[str] | None) -> None:
        """Trials still running in the table end here: ``resumable`` ones (None: all) as interrupted,
        the rest stopped."""
        ended = [row for row in self._trials.values() if row.get("status") in (RUNNING, INTERRUPTED)]
        for row in ended:
            if resumable is None or row["trial_id"] in resumable:
                row.update(status=INTERRUPTED, stop_reason="interrupted (Ctrl-C): `run --resume` continues it")
            else:
                row.update(status=STOPPED, ended=_now(), stop_reason=LOST)
        if ended:
            self._write_trials()

    # --- helpers --------------------------------------------------------------------------
    def _config(self, trial: Any) -> dict[str, Any]:
        """The trial's whole TrainConfig, built and validated once per trial."""
        if trial.trial_id not in self._configs:
            self._configs[trial.trial_id] = self.spec.trial_config(trial.config).to_dict()
        return self._configs[trial.trial_id]

    def _trial_row(self, trial: Any) -> dict[str, Any]:
        _ = self.store  # loads rows of a resumed study first
        row = self._trials.get(trial.trial_id)
        if row is None:  # once per trial: its config and sampled params do not change
            row = self._trials[trial.trial_id] = {"trial_id": trial.trial_id, "study": self.study,
                                                  **config_columns(self._config(trial))}
        if row.get("params") is None:  # a row read back from a study stored before params existed
            row.update(searched_params(self.spec.search_space, trial.config))
        return row

    def _write_trials(self, progress_only: bool = False) -> None:
        now = time.monotonic()
        if progress_only and now - self._written_at < self.progress_every_s:
            self._unwritten = True
            return
        store, rows = self.store, [dict(row) for row in self._trials.values()]  # as they are now
        # Merged only with a rewrite just before it: never ahead of a report handed over earlier.
        self.writes.submit("trials", lambda: store.write_trials(rows), adjacent=True)
        self._written_at, self._unwritten = now, False

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._trials.values():
            status = row.get("status") or RUNNING
            counts[status] = counts.get(status, 0) + 1
        return counts

    def _show(self) -> None:
        if not self.show_progress:
            return
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self.spec.samples, desc=f"study {self.study}", unit="trial", dynamic_ncols=True)
        counts = self.counts()
        self._bar.update(counts[FINISHED] + counts[STOPPED] + counts[ERRORED] - self._bar.n)
        best = max((r.get("best_val_miou") or 0.0 for r in self._trials.values()), default=0.0)
        self._bar.set_postfix_str(f"running {counts[RUNNING] + counts[INTERRUPTED]}, finished {counts[FINISHED]}, "
                                  f"stopped early {counts[STOPPED]}, errored {counts[ERRORED]}, "
                                  f"best val mIoU {100 * best:.1f}")


def searched_params(space: SearchSpace, config: dict[str, Any]) -> dict[str, str]:
    """The ``params`` and ``distributions`` columns of a trial: what Optuna sampled, and from what.

    Stored with the trial so that the report can rebuild an Optuna study (importance,
    slices) from the Parquet alone, on a machine that has neither the space file nor Ray.
    """
    from optuna.distributions import distribution_to_json

    replayed = space.replay(config)
    return {"params": json.dumps({name: value for name, (value, _) in replayed.items()}),
            "distributions": json.dumps({name: json.loads(distribution_to_json(dist))
                                         for name, (_, dist) in replayed.items()})}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _error_text(trial: Any) -> str:
    """The last line of the trial's traceback: the error itself."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "the trial raised (no error text was saved)"
