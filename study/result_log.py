"""Tune's own record of each trial (``result.json``, ``params.json``), written where the study lives.

Ray Tune's ``JsonLoggerCallback`` writes these files into the driver's staging folder, and Tune
uploads that whole folder every time it snapshots the experiment (every 2 s here): every
trial's files, finished or not, each time. In a bucket that is a request per file, per trial
ever started, per snapshot, so a study pays more for them the longer it runs (16 tiny trials:
375 of the study's 1272 requests; a study of hundreds of trials would spend its snapshots
uploading logs that did not change). ``ResultLog`` writes them into the trial's folder of the
study's location itself: the params once, ``result.json`` whole after each result, in Tune's
format at Tune's path, so that Tune's tools (``ExperimentAnalysis``, ``ResultGrid``) read them
as before. A driver that resumes appends to what the killed one wrote. Rewriting the file whole
costs bytes that grow with a trial's results, as Tune's own upload of it at every snapshot did;
in requests it costs one per result instead of three files per trial per snapshot.

Tune also keeps an empty folder per trial in its staging area, for error files, and walks that
area at every snapshot to upload it (in a bucket the folders cost no request: Tune writes
through ``study.location.tune_filesystem``). An ended trial's empty folder is removed, so a
snapshot walks the running trials' folders only, not every trial's ever started. The files are
written off Tune's loop (study/write_behind.py), flushed at each snapshot and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.tune import Callback
from ray.tune.utils.util import SafeFallbackEncoder

from study.location import Location, as_location
from study.write_behind import WRITES_LINGER_S, WriteBehind
from trainer.config import first_line

logger = logging.getLogger(__name__)

RESULTS_FILE, PARAMS_FILE = "result.json", "params.json"


class ResultLog(Callback):
    """``experiment``: the folder of Tune's experiment (``STUDY/tune/NAME``), local or remote."""

    def __init__(self, experiment: "Location | Path") -> None:
        self.experiment = as_location(experiment)
        self._lines: dict[str, list[str]] = {}  # trial id -> its result lines, while it runs
        self._resumed = False  # a study this driver started has no lines stored to look for
        self._swept = False
        self._writes = WriteBehind(linger_s=WRITES_LINGER_S)  # a trial's results of a moment: one rewrite

    # Tune pickles callbacks with the experiment, and a resumed driver unpickles them: it reads the
    # lines back from the files, and sweeps the staging folders Tune makes again for ended trials.
    def __getstate__(self) -> dict[str, Any]:
        return {"experiment": self.experiment}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["experiment"])
        self._resumed = True

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._swept:
            self._swept = True
            for trial in trials:
                if trial.status == "TERMINATED":
                    _remove_if_empty(trial.local_path)

    def flush(self) -> None:
        """Wait until every file handed over is written."""
        self._writes.flush()

    def hurry(self) -> None:
        """Start writing the files handed over now, without waiting for them."""
        self._writes.hurry()

    def get_state(self) -> None:
        self.flush()  # Tune snapshots the experiment (there is nothing else to save)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune's JsonLoggerCallback also pickles the config (params.pkl), for configs JSON cannot
        # hold; a study's are sampled numbers and names, and nothing in Ray reads that file back:
        # on an object store it was a request a trial for nothing.
        params = self._folder(trial) / PARAMS_FILE
        text = json.dumps(trial.config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        self._writes.submit(params.uri, lambda: params.write_text(text))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        lines = self._lines.get(trial.trial_id)
        if lines is None:  # the trial's first result in this driver: a resumed one has lines already
            lines = self._lines[trial.trial_id] = self._stored_lines(trial)
        lines.append(json.dumps(result, cls=SafeFallbackEncoder))
        stored, text = self._folder(trial) / RESULTS_FILE, "\n".join(lines) + "\n"
        self._writes.submit(stored.uri, lambda: _write_results(stored, text, trial.trial_id))

    # The file holds every line: nothing of an ended trial stays in the driver.
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._lines.pop(trial.trial_id, None)
        _remove_if_empty(trial.local_path)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._lines.pop(trial.trial_id, None)

    def _folder(self, trial: Any) -> Location:
        return self.experiment / posixpath.basename(trial.path.rstrip("/"))

    def _stored_lines(self, trial: Any) -> list[str]:
        stored = self._folder(trial) / RESULTS_FILE
        if not self._resumed or not stored.exists():
            return []
        return [line for line in stored.read_text().splitlines() if line.strip()]


def _write_results(stored: Location, text: str, trial_id: str) -> None:
    try:
        stored.write_text(text)
    except (OSError, pa.ArrowException) as err:
        # Tune's log, not the study's record (that is the Parquet store): a failed write must not
        # end the study, and the next result writes every line again, this one included.
        logger.warning("could not write %s of trial %s (%s); the next result writes it again",
                       RESULTS_FILE, trial_id, first_line(err))


def _remove_if_empty(staging: str | None) -> None:
    """Remove a trial's staging folder if nothing is in it (an errored trial's holds its error files)."""
    if staging:
        try:
            os.rmdir(staging)
        except OSError:  # not empty, or gone already
            pass
