"""Ctrl-C during a study: the first press saves and ends the run, the second ends it at once.

Ray Tune's ``fit()`` takes SIGINT itself: it stops the trials, saves the experiment state and
returns as if the study had ended, so the caller cannot tell an interrupted study from a
finished one. ``CtrlC`` owns SIGINT for the length of ``fit()`` instead, and asks Tune for the
same graceful stop through SIGUSR1, the stop signal Tune documents besides SIGINT. It keeps
the one thing Tune does not say: that the user pressed Ctrl-C.

A second press raises ``KeyboardInterrupt`` in the driver at once. The study stays resumable
all the same: Tune snapshots its experiment every few seconds (``TUNE_GLOBAL_CHECKPOINT_S``),
every trial checkpoint and Parquet part is written whole, and a resumed driver stores each
(trial, iteration) once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, TracebackType

# What Tune logs on its graceful stop: "Stop signal received ...", the Tuner.restore(...) advice
# for Python users of Tune, and an error listing the trials it cut; the command prints its own
# resume line instead. (Without a Ctrl-C, "Trials did not complete" is left alone.)
_TUNE_LOGGER = "ray.tune.tune"
_TUNE_STOP_MESSAGES = ("Stop signal received", "Experiment has been interrupted", "Training has been interrupted",
                       "Trials did not complete")


class _HideTuneStopAdvice(logging.Filter):
    def __init__(self, ctrl_c: "CtrlC") -> None:
        super().__init__()
        self.ctrl_c = ctrl_c

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.ctrl_c.pressed and str(record.msg).startswith(_TUNE_STOP_MESSAGES))


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped by Ctrl-C after its state was saved; ``run --resume`` continues it."""


class CtrlC:
    """Within ``with CtrlC() as ctrl_c: tuner.fit()``, ``ctrl_c.pressed`` says whether Ctrl-C ended it.

    Off the main thread (a notebook's worker thread, say) no handler can be installed; Tune
    then installs none either, and Ctrl-C is Python's usual ``KeyboardInterrupt``.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False
        self._previous: object = None
        self._previous_usr1: object = None
        self._tune_flag: str | None = None
        self._filter = _HideTuneStopAdvice(self)

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            # Tune would install its own SIGINT handler over ours; it keeps the SIGUSR1 one.
            self._tune_flag = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._previous_usr1 = signal.getsignal(signal.SIGUSR1)
            self._installed = True
            logging.getLogger(_TUNE_LOGGER).addFilter(self._filter)
        return self

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed or signal.getsignal(signal.SIGUSR1) == self._previous_usr1:
            # The second press (stop waiting for the save), or fit() has not yet started the run:
            # there is nothing of Tune's to save.
            raise KeyboardInterrupt
        self.pressed = True
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune: stop the trials, save the experiment, return

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
        # Tune leaves its SIGUSR1 handler behind; a later SIGUSR1 would call into a finished run.
        signal.signal(signal.SIGUSR1, self._previous_usr1)  # type: ignore[arg-type]
        logging.getLogger(_TUNE_LOGGER).removeFilter(self._filter)
        if self._tune_flag is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._tune_flag
        self._installed = False
