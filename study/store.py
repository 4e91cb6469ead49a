"""The Parquet results store of a study folder.

A study folder holds two Parquet datasets, each a folder of part files that
``pyarrow.dataset.dataset(path)``, ``pandas.read_parquet(path)`` and DuckDB
``read_parquet('path/*.parquet')`` read directly:

* ``results/reports/`` - one row per trial and evaluation, appended as the driver
  receives them (one part file per append; ``ResultStore.compact()`` merges them);
* ``results/trials/trials.parquet`` - one row per trial, rewritten as a whole.

Both carry ``SCHEMA_VERSION`` as the int16 column ``schema_version`` and as the Parquet
file metadata key ``semiseg_schema_version``. After the fixed columns come the trial's
config as flat ``config.<field>`` columns (TrainConfig fields; bool, int64, float64 or
string, and a list value such as ``aspp_dilations`` as a JSON string). Which config
columns exist may differ between parts; ``ResultStore.reports()`` unifies them (a
missing column reads as null), as does DuckDB's ``read_parquet(..., union_by_name = true)``,
whereas ``pyarrow.dataset`` and pandas take the first part's columns. After ``compact()``
(the end of ``semiseg-study run``) the reports are one file and every reader sees every column.

reports (``results/reports/``), one row per (trial_id, iteration):

==========================  ==================  ==================================================
column                      type                meaning
==========================  ==================  ==================================================
schema_version              int16               ``SCHEMA_VERSION`` of the writer
study                       string              study name
trial_id                    string              Ray Tune trial id
iteration                   int64               training iteration of the evaluation
time_total_s                float64             wall time of the trial so far, seconds
timestamp                   timestamp[ms, UTC]  when the driver received the report
val_miou                    float64             mean IoU on the val split, 0 to 1
iou                         list<float64>       IoU per class; NaN where a class never occurs
loss_supervised             float64             mean of each loss part since the previous
loss_pseudo_label           float64             evaluation; ``loss_total`` is the weighted
loss_entropy                float64             sum the optimiser saw
loss_contrastive_labeled    float64
loss_contrastive_unlabeled  float64
loss_total                  float64
bank_fill                   list<float64>       per class, fraction of bank_size in use
images_per_second           float64             training throughput since the previous evaluation
lr                          float64             learning rate at the evaluation
train_seconds               float64             training time so far, evaluations excluded
node                        string              hostname or Ray node IP of the trial
config.<field>              bool, int64,        the trial's TrainConfig, one column per field
                            float64 or string   (lists as JSON strings)
==========================  ==================  ==================================================

trials (``results/trials/trials.parquet``), one row per trial_id:

==========================  ==================  ==================================================
column                      type                meaning
==========================  ==================  ==================================================
schema_version              int16               ``SCHEMA_VERSION`` of the writer
study                       string              study name
trial_id                    string              Ray Tune trial id
status                      string              running, finished, stopped or errored
stop_reason                 string, nullable    why it ended early, e.g. ``asha: ...`` or
                                                ``diverged: loss is nan at iteration 12``
best_val_miou               float64             best val mIoU over its evaluations
last_val_miou               float64             val mIoU of its last evaluation
iterations                  int64               iterations reached
wall_seconds                float64             wall time of the trial, seconds
error                       string, nullable    the error of an errored trial
node                        string              hostname or Ray node IP of the trial
started                     timestamp[ms, UTC]  when it started (nullable)
ended                       timestamp[ms, UTC]  when it ended (nullable)
params                      string (JSON)       the values the search space sampled, by param name
distributions               string (JSON)       each sampled param's Optuna distribution, as
                                                ``optuna.distributions.distribution_to_json``
retries                     int64               times Ray restarted the trial from its last
                                                checkpoint after an error or a lost node
config.<field>              bool, int64,        the trial's TrainConfig, one column per field
                            float64 or string   (lists as JSON strings)
==========================  ==================  ==================================================

Guarantees, with one writing process (the study driver) per study folder:

* a write is atomic: a part goes to a hidden temp file (``.<name>.<random>.tmp``, which
  pyarrow, pandas and the ``*.parquet`` glob all skip), is fsynced, then renamed;
* a report is stored once: ``append_reports`` drops any (trial_id, iteration) the
  folder holds already, so a resumed driver may replay reports freely;
* a file in the folders that is not ours (corrupt, other columns, other schema version)
  is an error naming the file, never skipped in silence.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

SCHEMA_VERSION = 2  # 2: the trials table gained params and distributions
VERSION_KEY = b"semiseg_schema_version"
TABLE_KEY = b"semiseg_table"  # which of the two tables a file holds, so a misplaced file is caught
CONFIG_PREFIX = "config."
# As trainer.fit.LOSS_PARTS (a test checks they agree): importing trainer would pull in
# torch, and `semiseg-study status` should not wait for torch to print a table.
LOSS_PARTS = ("supervised", "pseudo_label", "entropy", "contrastive_labeled", "contrastive_unlabeled", "total")
STATUSES = ("running", "finished", "stopped", "errored")
TRIALS_FILE = "trials.parquet"
REPORT_KEY = ["trial_id", "iteration"]

_TIMESTAMP = pa.timestamp("ms", tz="UTC")

REPORT_FIELDS = pa.schema([
    ("schema_version", pa.int16()),
    ("study", pa.string()),
    ("trial_id", pa.string()),
    ("iteration", pa.int64()),
    ("time_total_s", pa.float64()),
    ("timestamp", _TIMESTAMP),
    ("val_miou", pa.float64()),
    ("iou", pa.list_(pa.float64())),
    *[(f"loss_{part}", pa.float64()) for part in LOSS_PARTS],
    ("bank_fill", pa.list_(pa.float64())),
    ("images_per_second", pa.float64()),
    ("lr", pa.float64()),
    ("train_seconds", pa.float64()),
    ("node", pa.string()),
])

TRIAL_FIELDS = pa.schema([
    ("schema_version", pa.int16()),
    ("study", pa.string()),
    ("trial_id", pa.string()),
    ("status", pa.string()),
    ("stop_reason", pa.string()),
    ("best_val_miou", pa.float64()),
    ("last_val_miou", pa.float64()),
    ("iterations", pa.int64()),
    ("wall_seconds", pa.float64()),
    ("error", pa.string()),
    ("node", pa.string()),
    ("started", _TIMESTAMP),
    ("ended", _TIMESTAMP),
    ("params", pa.string()),
    ("distributions", pa.string()),
    ("retries", pa.int64()),
])

RETRAIN_FIELDS = pa.schema([
    ("schema_version", pa.int16()),
    ("study", pa.string()),
    ("candidate", pa.string()),
    ("source", pa.string()),
    ("rank", pa.int64()),
    ("seed", pa.int64()),
    ("iterations", pa.int64()),
    ("test_miou", pa.float64()),
    ("val_miou", pa.float64()),
    ("test_iou", pa.list_(pa.float64())),
    ("train_seconds", pa.float64()),
    ("node", pa.string()),
    ("timestamp", _TIMESTAMP),
])
RETRAIN_KEY = ["candidate", "seed", "iterations"]


class StoreError(ValueError):
    """A file of the results store cannot be read as ours; the message names it and the fix."""


# --- schemas ------------------------------------------------------------------------------

def config_fields(config: Mapping[str, Any]) -> list[pa.Field]:
    """The ``config.<field>`` columns of a config dict (plain TrainConfig field names)."""
    return [pa.field(CONFIG_PREFIX + key, _infer_type(CONFIG_PREFIX + key, [value]))
            for key, value in config.items()]


def reports_schema(config: Mapping[str, Any] | None = None) -> pa.Schema:
    """The reports schema of a study: the fixed columns, then those of ``config``."""
    return _with_metadata(pa.schema([*REPORT_FIELDS, *config_fields(config or {})]), "reports")


def trials_schema(config: Mapping[str, Any] | None = None) -> pa.Schema:
    """The trials schema of a study: the fixed columns, then those of ``config``."""
    return _with_metadata(pa.schema([*TRIAL_FIELDS, *config_fields(config or {})]), "trials")


def _with_metadata(schema: pa.Schema, kind: str) -> pa.Schema:
    return schema.with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: kind.encode()})


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (Tune results often carry numpy numbers)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, tuple, dict)):
        return value.item()
    return value


def _config_value(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, (list, tuple, dict)):
        # One Parquet column holds one type; a JSON string holds any list and stays greppable.
        return json.dumps(value)
    return value


def _infer_type(column: str, values: Iterable[Any]) -> pa.DataType:
    kinds = set()
    for value in values:
        value = _config_value(value)
        if value is None:
            continue
        for kind in (bool, int, float, str):  # bool first: a bool is an int to Python
            if isinstance(value, kind):
                kinds.add(kind)
                break
        else:
            raise ValueError(f"column {column!r}: value {value!r} of type {type(value).__name__} cannot be stored; "
                             "expected bool, int, float, str or a JSON-serialisable list")
    if not kinds:
        return pa.null()  # all missing: null unifies with whatever type another part has
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds == {str}:
        return pa.string()
    names = ", ".join(sorted(k.__name__ for k in kinds))
    raise ValueError(f"column {column!r} mixes values of types {names}; a column holds one type")


# --- rows -----------------------------------------------------------------------------------

def flatten_report(study: str, trial_id: str, metrics: Mapping[str, Any], config: Mapping[str, Any], node: str,
                   time_total_s: float) -> dict[str, Any]:
    """One evaluation (the keys of ``trainer.fit.Evaluation.as_dict()``) as a flat reports row."""
    split = metrics.get("split", "val")
    if split != "val":
        raise ValueError(f"evaluation of split {split!r}: the reports table holds val evaluations only")
    losses = dict(metrics.get("losses") or {})
    unknown = sorted(set(losses) - set(LOSS_PARTS))
    if unknown:
        # A new loss part in the trainer needs a column here; dropping it silently would lose it.
        raise ValueError(f"unknown loss part(s) {unknown}; the reports schema has {list(LOSS_PARTS)}")
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "study": study,
        "trial_id": trial_id,
        "iteration": int(_plain(metrics["iteration"])),
        "time_total_s": _float(time_total_s),
        "timestamp": dt.datetime.now(dt.timezone.utc),
        "val_miou": _float(metrics.get("miou")),
        "iou": _floats(metrics.get("iou")),
        **{f"loss_{part}": _float(losses.get(part)) for part in LOSS_PARTS},
        "bank_fill": _floats(metrics.get("bank_fill")),
        "images_per_second": _float(metrics.get("images_per_second")),
        "lr": _float(metrics.get("lr")),
        "train_seconds": _float(metrics.get("train_seconds")),
        "node": node,
    }
    row.update({CONFIG_PREFIX + key: value for key, value in config.items()})
    return row


def _float(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None else float(value)


def _floats(values: Iterable[Any] | None) -> list[float | None] | None:
    return None if values is None else [_float(v) for v in values]


def _table(rows: list[dict[str, Any]], fixed: pa.Schema, kind: str, study: str) -> pa.Table:
    """Rows as a table of the fixed schema plus the config columns the rows hold."""
    config_columns: dict[str, None] = {}  # insertion-ordered: TrainConfig's field order, not sorted
    for row in rows:
        name = "trial_id" if "trial_id" in fixed.names else "candidate"  # what a row is about
        trial = row.get(name)
        if not isinstance(trial, str) or not trial:
            raise ValueError(f"{kind} row without a {name}: {row!r:.200}")
        which = f"{kind} row of {'trial' if name == 'trial_id' else 'candidate'} {trial!r}"
        for key in row:
            if key.startswith(CONFIG_PREFIX):
                config_columns.setdefault(key)
            elif key not in fixed.names:
                raise ValueError(f"{which} has unknown column {key!r}; "
                                 f"expected {', '.join(fixed.names)} or config.<field>")
        version = row.get("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            raise ValueError(f"{which} has schema_version {version}, "
                             f"this store writes {SCHEMA_VERSION}")
        if row.get("study") not in (None, study):
            raise ValueError(f"{which} belongs to study {row['study']!r}, not to {study!r}")
    arrays: list[pa.Array] = []
    for f in fixed:
        if f.name == "schema_version":
            values: list[Any] = [SCHEMA_VERSION] * len(rows)
        elif f.name == "study":
            values = [study] * len(rows)
        elif pa.types.is_floating(f.type):
            values = [_float(row.get(f.name)) for row in rows]
        else:
            values = [_plain(row.get(f.name)) for row in rows]
        try:
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise ValueError(f"{kind} column {f.name!r} ({f.type}) cannot hold the given values: {err}") from None
    fields = list(fixed)
    for name in config_columns:
        values = [_config_value(row.get(name)) for row in rows]
        column_type = _infer_type(name, values)
        if pa.types.is_floating(column_type):
            values = [_float(v) for v in values]
        arrays.append(pa.array(values, type=column_type))
        fields.append(pa.field(name, column_type))
    return pa.Table.from_arrays(arrays, schema=_with_metadata(pa.schema(fields), kind))


# --- files ----------------------------------------------------------------------------------

def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that a reader sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # A rename survives a power cut only once the directory is synced (POSIX); elsewhere skip.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _part_name() -> str:
    # Nanosecond time first: parts sort in the order they were written.
    return f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"


def _data_files(folder: Path) -> list[Path]:
    """The files a dataset reader sees in ``folder``: all but those starting with '.' or '_'."""
    if not folder.is_dir():
        return []
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if not entry.is_file():
            raise StoreError(f"{entry} is a folder, but {folder} should hold Parquet part files only "
                             f"(pyarrow would read into it); move it out of {folder}")
        files.append(entry)
    return files


def _open_checked(path: Path, fixed: pa.Schema, kind: str) -> pq.ParquetFile:
    """Open one part and check it is ours, or raise StoreError saying what is wrong and what to do."""
    move = f"move it out of {path.parent} (every reader of the folder reads every file in it)"
    try:
        part = pq.ParquetFile(path)
        schema = part.schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path} is not a readable Parquet file ({err}); {move}") from None
    metadata = part.metadata.metadata or {}
    version = metadata.get(VERSION_KEY)
    if version is None:
        raise StoreError(f"{path} is not a semiseg-study {kind} file (no {VERSION_KEY.decode()} metadata); {move}")
    if version != str(SCHEMA_VERSION).encode():
        raise StoreError(f"{path} has schema version {version.decode(errors='replace')}, this code reads version "
                         f"{SCHEMA_VERSION}; {move}, or read it with the semiseg-study release that wrote it")
    written_kind = metadata.get(TABLE_KEY, kind.encode())
    if written_kind != kind.encode():
        raise StoreError(f"{path} holds the {written_kind.decode(errors='replace')} table, not {kind}; {move}")
    for f in fixed:
        if f.name not in schema.names:
            raise StoreError(f"{path} lacks the required column {f.name!r}; {move}")
        if schema.field(f.name).type != f.type:
            raise StoreError(f"{path}: column {f.name!r} has type {schema.field(f.name).type}, "
                             f"expected {f.type}; {move}")
    return part


def _read_checked(path: Path, fixed: pa.Schema, kind: str, columns: list[str] | None = None,
                  part: pq.ParquetFile | None = None) -> pa.Table:
    part = part or _open_checked(path, fixed, kind)
    try:
        return part.read(columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path} is damaged ({err}); move it out of {path.parent}") from None


def _unify(schemas: list[pa.Schema], folder: Path) -> pa.Schema:
    try:
        # permissive: a config column that is int64 in one part and float64 in another reads as float64.
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise StoreError(f"the parts of {folder} disagree on a column's type ({err}); find the odd part with "
                         f"`pyarrow.parquet.read_schema` and move it out of {folder}") from None


def _concat(tables: list[pa.Table], folder: Path, fixed: pa.Schema, kind: str) -> pa.Table:
    if not tables:
        return _with_metadata(fixed, kind).empty_table()
    unified = _with_metadata(_unify([t.schema for t in tables], folder), kind)
    return pa.concat_tables([_aligned(t, unified) for t in tables])


def _aligned(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema``, in its order; a column the part lacks is null."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.schema.names
              else pa.nulls(table.num_rows, type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _first_of_each_key(table: pa.Table, key: list[str]) -> pa.Table:
    """Rows whose key occurs for the first time (a crash mid-compaction leaves duplicates)."""
    seen: set[tuple] = set()
    keep = []
    for values in zip(*(table.column(k).to_pylist() for k in key)):
        keep.append(values not in seen)
        seen.add(values)
    return table if all(keep) else table.filter(pa.array(keep, type=pa.bool_()))


def dataset(folder: str | Path) -> pads.Dataset:
    """A pyarrow dataset of a store folder (temp files are hidden: their names start with '.')."""
    return pads.dataset(folder, format="parquet")


# --- the store ------------------------------------------------------------------------------

class ResultStore:
    """The ``results/`` folder of one study: reports appended exactly once, trials rewritten.

    One process writes a study folder (the driver); any number may read it.
    """

    def __init__(self, study_dir: Path, study: str) -> None:
        self.study_dir = Path(study_dir)
        self.study = study
        self.reports_dir = self.study_dir / "results" / "reports"
        self.trials_dir = self.study_dir / "results" / "trials"
        self.retrain_dir = self.study_dir / "retrain"
        self._keys: set[tuple[str, int]] | None = None  # loaded from the parts on first need
        # The trials table as last written: the driver rewrites it on every report, and reading
        # the file back each time to merge would double that I/O (one writer per folder).
        self._trial_rows: dict[str, dict[str, Any]] | None = None
        self._schema: pa.Schema | None = None          # unified schema of the parts, to refuse conflicts early

    # --- reports ----------------------------------------------------------------------
    def existing_keys(self) -> set[tuple[str, int]]:
        """The (trial_id, iteration) of every stored report."""
        return set(self._stored_keys())

    def _stored_keys(self) -> set[tuple[str, int]]:
        if self._keys is None:
            keys: set[tuple[str, int]] = set()
            schemas = []
            for path in _data_files(self.reports_dir):
                part = _open_checked(path, REPORT_FIELDS, "reports")
                schemas.append(part.schema_arrow)
                table = _read_checked(path, REPORT_FIELDS, "reports", REPORT_KEY, part)
                keys.update(zip(table.column("trial_id").to_pylist(), table.column("iteration").to_pylist()))
            self._schema = _unify(schemas, self.reports_dir) if schemas else None
            self._keys = keys
        return self._keys

    def append_reports(self, rows: list[dict[str, Any]]) -> int:
        """Store the rows whose (trial_id, iteration) is new, as one part; return how many."""
        stored = self._stored_keys()
        fresh: list[dict[str, Any]] = []
        keys: set[tuple[str, int]] = set()
        for row in rows:
            if row.get("iteration") is None:
                raise ValueError(f"report row of trial {row.get('trial_id')!r} has no iteration")
            key = (row.get("trial_id"), int(_plain(row["iteration"])))
            if key in stored or key in keys:
                continue
            fresh.append(row)
            keys.add(key)
        if not fresh:
            return 0
        table = _table(fresh, REPORT_FIELDS, "reports", self.study)
        unified = table.schema
        if self._schema is not None:
            try:
                # Refuse now rather than write a part that makes the whole folder unreadable.
                unified = pa.unify_schemas([self._schema, table.schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise ValueError(f"these reports do not fit the stored ones: {err}") from None
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(table, self.reports_dir / _part_name())
        stored.update(keys)
        self._schema = unified
        return len(fresh)

    def reports(self) -> pa.Table:
        """Every stored report, config columns unified across parts (missing = null)."""
        paths = _data_files(self.reports_dir)
        tables = [_read_checked(p, REPORT_FIELDS, "reports") for p in paths]
        return _first_of_each_key(_concat(tables, self.reports_dir, REPORT_FIELDS, "reports"), REPORT_KEY)

    def compact(self) -> int:
        """Merge the report parts into one file; return how many parts it replaced.

        The merged part is renamed into place before the old parts are removed, so a
        crash in between leaves duplicates (which ``reports()`` drops and the next
        compaction removes), never a loss.
        """
        paths = _data_files(self.reports_dir)
        if len(paths) < 2:
            return 0
        tables = [_read_checked(p, REPORT_FIELDS, "reports") for p in paths]
        merged = _first_of_each_key(_concat(tables, self.reports_dir, REPORT_FIELDS, "reports"), REPORT_KEY)
        _write_atomic(merged, self.reports_dir / _part_name())
        for path in paths:
            path.unlink(missing_ok=True)
        _fsync_dir(self.reports_dir)
        return len(paths)

    # --- trials -----------------------------------------------------------------------
    def write_trials(self, rows: list[dict[str, Any]]) -> None:
        """Replace the rows of these trials (by trial_id), keep the other trials, rewrite the file."""
        if self._trial_rows is None:
            self._trial_rows = {row["trial_id"]: row for row in self.trials().to_pylist()}
        merged = dict(self._trial_rows)
        for row in rows:
            row = dict(row)
            if not isinstance(row.get("trial_id"), str) or not row["trial_id"]:
                raise ValueError(f"trials row without a trial_id: {row!r:.200}")
            # A trial restored mid-run reports before Tune calls on_trial_start: it is running.
            if row.get("status") is None:
                row["status"] = "running"
            if row["status"] not in STATUSES:
                raise ValueError(f"trial {row['trial_id']!r} has status {row['status']!r}; "
                                 f"expected one of {', '.join(STATUSES)}")
            merged[row["trial_id"]] = row
        table = _table(list(merged.values()), TRIAL_FIELDS, "trials", self.study)
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(table, self.trials_dir / TRIALS_FILE)
        self._trial_rows = merged  # only once the file holds them

    def trials(self) -> pa.Table:
        """One row per trial (empty, with the fixed columns, before the first write)."""
        paths = _data_files(self.trials_dir)
        tables = [_read_checked(p, TRIAL_FIELDS, "trials") for p in paths]
        return _first_of_each_key(_concat(tables, self.trials_dir, TRIAL_FIELDS, "trials"), ["trial_id"])

    # --- retrain ----------------------------------------------------------------------
    def append_retrain(self, rows: list[dict[str, Any]]) -> None:
        """Store finished retrain runs, one part per call (written atomically)."""
        if rows:
            self.retrain_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(_table(rows, RETRAIN_FIELDS, "retrain", self.study), self.retrain_dir / _part_name())

    def retrain(self) -> pa.Table:
        """Every retrain run, once per (candidate, seed, iterations)."""
        paths = _data_files(self.retrain_dir)
        tables = [_read_checked(p, RETRAIN_FIELDS, "retrain") for p in paths]
        return _first_of_each_key(_concat(tables, self.retrain_dir, RETRAIN_FIELDS, "retrain"), RETRAIN_KEY)


# --- status -----------------------------------------------------------------------------------

def status_table(trials: pa.Table) -> str:
    """The trials as a plain-text table, best val mIoU first (trials without one last)."""
    rows = trials.to_pylist()
    if not rows:
        return "no trials yet"

    def best(row: dict[str, Any]) -> float:
        value = row.get("best_val_miou")
        return -math.inf if value is None or math.isnan(value) else value

    rows.sort(key=best, reverse=True)  # stable: ties keep the table's order
    header = ("trial", "status", "best mIoU", "iterations", "wall s", "stop reason")
    lines = [header]
    for row in rows:
        miou, wall, iterations = row.get("best_val_miou"), row.get("wall_seconds"), row.get("iterations")
        reason, error = row.get("stop_reason") or "", row.get("error") or ""
        if error and error not in reason:  # "raised" alone does not say what went wrong
            reason = f"{reason}: {error}" if reason else error
        lines.append((
            str(row["trial_id"]),
            str(row.get("status") or ""),
            "-" if miou is None or math.isnan(miou) else f"{100 * miou:.1f}",
            "-" if iterations is None else str(iterations),
            "-" if wall is None else f"{wall:.0f}",
            reason if len(reason) <= 60 else reason[:57] + "...",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4}  # right-aligned so that the digits line up
    text = []
    for line in lines:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        text.append("  ".join(cells).rstrip())
    return "\n".join(text)
