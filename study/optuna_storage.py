"""Which Optuna storage a study records its trials in, opened without ever storing a secret.

* ``--storage URL``: that database. A password in the URL is used by this driver and never
  stored: ``study.json`` keeps the URL without it, and Tune's pickled searcher holds the same
  password-free URL. A resumed driver takes it from ``SEMISEG_STORAGE_PASSWORD`` (any
  database), or, for PostgreSQL, from where libpq looks by itself (``PGPASSWORD``,
  ``~/.pgpass``, ``PGPASSFILE``).
* no ``--storage``, a local study folder: SQLite in it (``optuna.db``), as always.
* no ``--storage``, a remote location: SQLite on the driver's disk with its snapshot in the
  location (``study/optuna_snapshot.py`` says why).
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy.engine
from optuna.storages import RDBStorage

from study.location import Location
from study.optuna_snapshot import OptunaSnapshot, SnapshotStorage
from trainer.config import ConfigError

PASSWORD_ENV = "SEMISEG_STORAGE_PASSWORD"


def split_password(url: str | None) -> tuple[str | None, str | None]:
    """(the URL without its password, the password or None)."""
    if not url:
        return url, None
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - not a database URL: Optuna's open says so, in one line
        return url, None
    if parsed.password is None:
        return url, None
    # URL.set(password=None) means "leave it": build the URL again without one.
    bare = sqlalchemy.engine.URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port,
                                        parsed.database, parsed.query)
    return bare.render_as_string(hide_password=False), str(parsed.password)


def _with_password(url: str, password: str | None) -> str:
    if not password:
        return url
    return sqlalchemy.engine.make_url(url).set(password=password).render_as_string(hide_password=False)


class SecretFreeStorage(RDBStorage):
    """RDBStorage that pickles (into Tune's experiment) its URL without the password, and takes
    the password from ``SEMISEG_STORAGE_PASSWORD`` when unpickled (libpq's own places otherwise)."""

    def __init__(self, url: str, password: str | None, **kwargs: Any) -> None:
        self.public_url = url
        super().__init__(_with_password(url, password), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "url": self.public_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "url": _with_password(state["public_url"], os.environ.get(PASSWORD_ENV))})


def open_storage(storage: str | None, folder: Location, study_id: str, *, resume: bool,
                 password: str | None = None) -> RDBStorage:
    """The study's Optuna storage (see the module docstring); ConfigError if it cannot be opened."""
    try:
        if storage:
            return SecretFreeStorage(storage, password or os.environ.get(PASSWORD_ENV))
        if folder.local:
            return RDBStorage(f"sqlite:///{folder.path / 'optuna.db'}")
        return SnapshotStorage(OptunaSnapshot(folder / "optuna.db", study_id), fresh=not resume)
    except ConfigError:
        raise
    except Exception as err:  # a bad URL, an unreachable database, refused credentials
        shown = storage or str(folder / "optuna.db")
        hint = ""
        if storage and not password and not os.environ.get(PASSWORD_ENV) and _has_user(storage):
            hint = (f"; the password is never stored with the study: give it in {PASSWORD_ENV}, or for PostgreSQL "
                    "in PGPASSWORD or ~/.pgpass")
        raise ConfigError(f"--storage {shown!r}: Optuna cannot open it: {_first_line(err, password)}{hint}") from None


def _has_user(url: str) -> bool:
    """A URL that names a database user (whose password may be what is missing)."""
    try:
        return bool(sqlalchemy.engine.make_url(url).username)
    except Exception:  # noqa: BLE001 - not a database URL
        return False


def _first_line(err: BaseException, password: str | None) -> str:
    text = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:300]
    return text.replace(password, "***") if password else text
