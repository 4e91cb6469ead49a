"""Tune's own record of each trial (``result.json``, ``params.json``, ``params.pkl``), written
where the study lives.

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
"""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray import cloudpickle
from ray.tune import Callback
from ray.tune.utils.util import SafeFallbackEncoder

from study.location import Location, as_location
from trainer.config import first_line

logger = logging.getLogger(__name__)

RESULTS_FILE, PARAMS_FILE, PARAMS_PICKLE = "result.json", "params.json", "params.pkl"


class ResultLog(Callback):
    """``experiment``: the folder of Tune's experiment (``STUDY/tune/NAME``), local or remote."""

    def __init__(self, experiment: "Location | Path") -> None:
        self.experiment = as_location(experiment)
        self._lines: dict[str, list[str]] = {}  # trial id -> its result lines, while it runs

    # Tune pickles callbacks with the experiment: a resumed driver reads the lines back from the files.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lines": {}}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        folder = self._folder(trial)
        (folder / PARAMS_FILE).write_text(json.dumps(trial.config, indent=2, sort_keys=True, cls=SafeFallbackEncoder))
        (folder / PARAMS_PICKLE).write_bytes(cloudpickle.dumps(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        lines = self._lines.get(trial.trial_id)
        if lines is None:  # the trial's first result in this driver: a resumed one has lines already
            lines = self._lines[trial.trial_id] = self._stored_lines(trial)
        lines.append(json.dumps(result, cls=SafeFallbackEncoder))
        try:
            (self._folder(trial) / RESULTS_FILE).write_text("\n".join(lines) + "\n")
        except (OSError, pa.ArrowException) as err:
            # Tune's log, not the study's record (that is the Parquet store): a failed write must not
            # end the study, and the next result writes every line again, this one included.
            logger.warning("could not write %s of trial %s (%s); the next result writes it again",
                           RESULTS_FILE, trial.trial_id, first_line(err))

    # The file holds every line: nothing of an ended trial stays in the driver.
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._lines.pop(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._lines.pop(trial.trial_id, None)

    def _folder(self, trial: Any) -> Location:
        return self.experiment / posixpath.basename(trial.path.rstrip("/"))

    def _stored_lines(self, trial: Any) -> list[str]:
        stored = self._folder(trial) / RESULTS_FILE
        if not stored.exists():
            return []
        return [line for line in stored.read_text().splitlines() if line.strip()]
