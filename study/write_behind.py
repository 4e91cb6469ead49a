"""The driver's writes, done on a thread of their own so that Ray Tune's loop does not wait on them.

Tune calls its callbacks on the driver's loop, and a trial's next step waits for the loop to take
its result: every write made there (a report part, the trials table, a trial's ``result.json``)
is time that every running trial waits. On an object store that is a round trip each, about
12 ms on moto here, several a result. ``WriteBehind`` takes those writes and does them on one
thread. A write to a key that is still waiting takes the place of the one before (a file
rewritten whole needs only its latest content).

With ``delay_s``, the first write handed over after a quiet spell opens a window of that many
seconds, and the writes handed over meanwhile wait for its end: a file rewritten many times a
second (a study of short trials) is written once a window, and the callers that gather rows (the
reports) write them as one part. At the end of a window, and at ``flush()``, every waiting write
is done in one pass: lowest ``rank`` first, then in the order handed over. The ranks let a write
depend on another one of the same pass: a report is stored before the ASHA rungs that name its
score, and a trial's row before its reports.

``flush()`` returns once everything handed over before it is written. The callbacks call it when
Tune snapshots the experiment (``Callback.get_state``, called before the snapshot is uploaded), so
that the snapshot a resume starts from never names a result whose report is not stored; writes
handed over after the last snapshot are of results that the resumed trials replay. They call it
when a run ends, too.

A write that raises does not stop the ones after it (each is a file of its own); its error is
raised on the driver's thread by the next ``submit`` or ``flush``, where Tune sees it as it saw
the write's error before.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable


class WriteBehind:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._waiting: dict[Hashable, tuple[int, Callable[[], None]]] = {}  # in the order handed over
        self._due = 0.0  # when the waiting writes are to be done (monotonic)
        self._hurry = False  # a flush is waiting: write now
        self._changed = threading.Condition()
        self._writing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, write: Callable[[], None], rank: int = 0) -> None:
        """Do ``write()`` at the end of the current window, after the waiting writes of a lower
        ``rank`` and those of its rank handed over before it; it replaces a waiting write of ``key``."""
        with self._changed:
            self._raise_error()
            if not self._waiting:
                self._due = time.monotonic() + self.delay_s
            self._waiting[key] = (rank, write)  # a waiting key keeps its place in the order
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="study-write-behind", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self) -> None:
        """Do every write handed over so far, now, and wait for them; raise the first error since the last call."""
        with self._changed:
            self._hurry = True
            self._changed.notify_all()
            while self._waiting or self._writing:
                self._changed.wait()
            self._hurry = False
            self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting or not (self._hurry or time.monotonic() >= self._due):
                    self._changed.wait(None if not self._waiting else max(0.0, self._due - time.monotonic()))
                batch = sorted(self._waiting.values(), key=lambda ranked: ranked[0])  # stable: order within a rank
                self._waiting.clear()
                self._writing = True
            for _, write in batch:
                try:
                    write()
                except BaseException as err:  # noqa: BLE001 - handed to the driver's thread
                    with self._changed:
                        self._error = self._error or err
            with self._changed:
                self._writing = False
                self._changed.notify_all()
