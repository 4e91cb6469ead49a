"""The driver's writes, done on a thread of their own so that Ray Tune's loop does not wait on them.

Tune calls its callbacks on the driver's loop, and a trial's next step waits for the loop to take
its result: every write made there (a report part, the trials table, a trial's ``result.json``)
is time that every running trial waits. On an object store that is a round trip each, about
12 ms on moto here, several a result. ``WriteBehind`` takes those writes and does them in the
order given, on one thread. A write to a key that is still waiting takes the place of the one
before (a file rewritten whole needs only its latest content), keeping that one's place in the
order; with ``adjacent=True`` only if nothing was handed over between the two, so that its content
never lands before a write handed over ahead of it (the trials table saying a trial ended before
that trial's last report is stored).

``linger_s``: a writer that was idle waits that long before it starts, so that the writes of one
step of Tune's loop go as one (a trial that ends and the one started in its place: one rewrite
of the trials table, not two). A flush never waits for it.

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
from collections import OrderedDict
from typing import Callable, Hashable


class WriteBehind:
    def __init__(self, linger_s: float = 0.0) -> None:
        self.linger_s = linger_s
        self._waiting: OrderedDict[tuple[Hashable, int], Callable[[], None]] = OrderedDict()
        self._slots: dict[Hashable, int] = {}  # key -> the number of its latest place in the order
        self._changed = threading.Condition()
        self._writing = False
        self._flushes = 0  # flushes waiting: the writer does not linger while there is one
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, write: Callable[[], None], adjacent: bool = False) -> None:
        """Do ``write()`` after the writes handed over before it; it replaces a waiting write of
        ``key`` (with ``adjacent``, only one handed over just before it)."""
        with self._changed:
            self._raise_error()
            slot = (key, self._slots.get(key, 0))
            if slot in self._waiting and (not adjacent or next(reversed(self._waiting)) == slot):
                self._waiting[slot] = write  # in the place of the one it replaces
            else:
                self._slots[key] = slot[1] + 1
                self._waiting[(key, slot[1] + 1)] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="study-write-behind", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every write handed over so far is done; raise the first error since the last call."""
        with self._changed:
            self._flushes += 1
            self._changed.notify_all()
            try:
                while self._waiting or self._writing:
                    self._changed.wait()
            finally:
                self._flushes -= 1
            self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        idle = True  # nothing was waiting when the last write ended
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                if idle:  # let the rest of this step of Tune's loop join in
                    until = time.monotonic() + self.linger_s
                    while not self._flushes and (left := until - time.monotonic()) > 0:
                        self._changed.wait(left)
                _, write = self._waiting.popitem(last=False)
                self._writing = True
            try:
                write()
            except BaseException as err:  # noqa: BLE001 - handed to the driver's thread
                with self._changed:
                    self._error = self._error or err
            finally:
                with self._changed:
                    self._writing, idle = False, not self._waiting
                    self._changed.notify_all()
