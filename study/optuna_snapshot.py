"""Optuna's record of a study kept in a remote location (``--dir s3://...`` without ``--storage``).

SQLite cannot live in a bucket (it needs file locks and writes in place), so the driver works
on a SQLite file of its own disk, under the cache (``$SEMISEG_CACHE/optuna/STUDY_ID/``), and
uploads a consistent copy of it to ``LOCATION/optuna.db`` each time Ray Tune checkpoints the
searcher. A driver on another machine resumes with nothing but the URI: it downloads that
copy to its own cache before Tune hands the searcher its saved state, and points the restored
Optuna storage at it.

Why a snapshot and not a study rebuilt from the Parquet tables: Tune's own searcher state
(pickled with the experiment) names Optuna trials by their ids in the storage and holds the
sampler's state; a snapshot taken in the same instant as that state agrees with it by
construction, so a resume behaves exactly as a local one does (the trials Tune knew of are
told, the others failed). A rebuilt study would need every id remapped and would lose what
Parquet does not hold (trials asked for but not started, Optuna's system attributes). The
cost is one small upload per Tune checkpoint that changed the database (every 2 s at most).
The copy in the bucket also opens in optuna-dashboard once downloaded.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

from study.location import Location
from trainer.cache import cache_dir

SNAPSHOT_FILE = "optuna.db"


# Study ids whose working copy this process has made or downloaded: from then on it is the live
# record, and a later unpickling of the storage (Tune restores it more than once) must not
# replace it with the older snapshot.
_READY: set[str] = set()


@dataclass
class OptunaSnapshot:
    """``remote``: the study's ``optuna.db`` in its location; the working copy is on this machine."""

    remote: Location
    study_id: str
    _uploaded: str = ""  # digest of the last upload, to skip unchanged databases

    @property
    def local(self) -> Path:
        # Computed where it is used, never pickled as a path: a resumed driver has its own cache.
        return cache_dir() / "optuna" / self.study_id / SNAPSHOT_FILE

    @property
    def url(self) -> str:
        return f"sqlite:///{self.local}"

    def prepare(self, fresh: bool) -> None:
        """Make the working copy: empty for a new study, else the location's snapshot (which agrees
        with Tune's saved searcher), replacing whatever an earlier driver left in this cache."""
        self.local.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.local.unlink(missing_ok=True)
        elif self.remote.is_file():
            data = self.remote.read_bytes()
            Location(str(self.local)).write_bytes(data)
            self._uploaded = hashlib.sha256(data).hexdigest()
        _READY.add(self.study_id)

    def upload(self) -> None:
        """Send a consistent copy of the working database (SQLite's backup API) if it changed."""
        if not self.local.is_file():
            return
        with tempfile.TemporaryDirectory(prefix="semiseg-optuna-") as tmp:
            copy = Path(tmp) / SNAPSHOT_FILE
            source, target = sqlite3.connect(self.local), sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
            data = copy.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self._uploaded:
            self.remote.write_bytes(data)
            self._uploaded = digest


class SnapshotStorage(RDBStorage):
    """Optuna's RDBStorage on the working copy of an ``OptunaSnapshot``.

    Tune pickles the searcher, and this storage with it, into the experiment; unpickled by a
    driver on another machine it opens that machine's copy (downloaded first if this process
    has not made one), not the path of the machine that pickled it.
    """

    def __init__(self, snapshot: OptunaSnapshot, fresh: bool) -> None:
        self.snapshot = snapshot
        snapshot.prepare(fresh)
        super().__init__(snapshot.url)

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot: OptunaSnapshot = state["snapshot"]
        if snapshot.study_id not in _READY:
            snapshot.prepare(fresh=False)
        super().__setstate__({**state, "url": snapshot.url})

    def upload(self) -> None:
        self.snapshot.upload()
