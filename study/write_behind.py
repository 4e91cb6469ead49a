"""The driver's writes, done on a thread of their own so that Ray Tune's loop does not wait on them.

Tune calls its callbacks on the driver's loop, and a trial's next step waits for the loop to take
its result: every write made there (a report part, the trials table, a trial's ``result.json``)
is time that every running trial waits. On an object store that is a round trip each, about
12 ms on moto here, several a result. ``WriteBehind`` takes those writes and does them in the
order given, on one thread. A write to a key that is still waiting takes the place of the one
before (a file rewritten whole needs only its latest content), keeping that one's place in the
order; with ``adjacent=True`` only if nothing was handed over between the two, so that its content
never lands before a write handed over ahead of it (the trials table saying a trial ended before
that trial's last report is stored). ``append`` gathers items (report rows) that are handed over
one after another into one write (one part), nothing written in between, so nothing reordered.

``linger_s``: a writer that was idle waits that long before it starts, so that the writes of one
step of Tune's loop go as one (a trial that ends and the one started in its place: one rewrite
of the trials table, not two). A flush never waits for it.

``hurry()`` cuts a linger short without waiting: a snapshot hurries every writer of the driver
first and then waits for each, so that it waits for the slowest, not for their sum.

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
from typing import Any, Callable, Hashable


# How long the driver's idle writer waits for the writes of the moment to gather: a trial that
# ends and the one Tune starts in its place rewrite the trials table once, results that come
# together store their reports as one part and rewrite the rungs once (on an object store each
# write is a request). A killed driver may lose writes this much younger than it would have, all
# of them of results after Tune's last snapshot (which waits for the writer): the trials that
# snapshot knows report them again, one it does not know is recorded lost, as before.
WRITES_LINGER_S = 0.25


class WriteBehind:
    def __init__(self, linger_s: float = 0.0) -> None:
        self.linger_s = linger_s
        self._waiting: OrderedDict[tuple[Hashable, int], Callable[[], None]] = OrderedDict()
        self._slots: dict[Hashable, int] = {}  # key -> the number of its latest place in the order
        self._gathered: dict[tuple[Hashable, int], list[Any]] = {}  # the items of an ``append`` slot
        self._changed = threading.Condition()
        self._writing = False
        self._hurried = False  # the writes waiting now are not to linger (cleared once they are done)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, write: Callable[[], None], adjacent: bool = False) -> None:
        """Do ``write()`` after the writes handed over before it; it replaces a waiting write of
        ``key`` (with ``adjacent``, only one handed over just before it)."""
        with self._changed:
            self._raise_error()
            slot = self._slot(key, adjacent)
            self._waiting[slot] = write  # a replaced write keeps its place in the order
            self._start()

    def append(self, key: Hashable, item: Any, write: Callable[[list[Any]], None]) -> None:
        """Add ``item`` to the items of the waiting ``write`` of ``key`` handed over just before this
        call, or else hand over ``write`` of ``[item]``; a write is called with its items once."""
        with self._changed:
            self._raise_error()
            slot = self._slot(key, adjacent=True)
            if slot in self._waiting:
                self._gathered[slot].append(item)
                return
            items = self._gathered[slot] = [item]
            self._waiting[slot] = lambda: write(items)
            self._start()

    def _slot(self, key: Hashable, adjacent: bool) -> tuple[Hashable, int]:
        """The place in the order of a write of ``key``: that of its waiting write if it may take
        it, else a new one at the end."""
        slot = (key, self._slots.get(key, 0))
        if slot in self._waiting and (not adjacent or next(reversed(self._waiting)) == slot):
            return slot
        self._slots[key] = slot[1] + 1
        return key, slot[1] + 1

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="study-write-behind", daemon=True)
            self._thread.start()
        self._changed.notify_all()

    def hurry(self) -> None:
        """Start the waiting writes now, without waiting for them."""
        with self._changed:
            if self._waiting:
                self._hurried = True
                self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every write handed over so far is done; raise the first error since the last call."""
        self.hurry()
        with self._changed:
            while self._waiting or self._writing:
                self._changed.wait()
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
                    while not self._hurried and (left := until - time.monotonic()) > 0:
                        self._changed.wait(left)
                slot, write = self._waiting.popitem(last=False)
                self._gathered.pop(slot, None)  # no item joins a write that has started
                self._writing = True
            try:
                write()
            except BaseException as err:  # noqa: BLE001 - handed to the driver's thread
                with self._changed:
                    self._error = self._error or err
            finally:
                with self._changed:
                    self._writing, idle = False, not self._waiting
                    self._hurried = self._hurried and not idle
                    self._changed.notify_all()
