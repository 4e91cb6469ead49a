"""The Parquet store of a study folder: schema-checked parts written whole, read with pyarrow.dataset.

What the rows hold is ``study/records.py``'s; this module only puts them on disk and reads them
back. ``pyarrow.dataset.dataset(path)``, ``pandas.read_parquet(path)`` and DuckDB
``read_parquet('path/*.parquet')`` read the folders directly.

The folder is a ``study.location.Location``: a local folder, or a prefix of an object store
(``s3://...``), read and written through pyarrow.fs. Guarantees, with one writing process (the
study driver) per study folder:

* the reports a driver writes go into a folder of its own under ``results/reports``
  (``driver-<ns>-<hex>/part-*.parquet``; pyarrow, pandas and DuckDB's ``**/*.parquet`` read
  it with the rest), so that compaction removes them with one batch delete; after compaction
  the reports are one part at the top of the folder;
* a write is atomic: locally a part goes to a hidden temp file (``.<name>.<random>.tmp``, which
  pyarrow, pandas and the ``*.parquet`` glob all skip), is fsynced, then renamed; an object
  store has no rename, so there the part is serialised whole in memory and sent as one object
  under its final, unique key (an object is visible only once complete);
* a report is stored once: ``append_reports`` drops any (trial_id, iteration) the
  folder holds already, so a resumed driver may replay reports freely, and readers keep
  the first row of each key (a crash mid-compaction leaves a part twice);
* a file in the folders that is not ours (corrupt, other columns, other schema version)
  is an error naming the file, never skipped in silence.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from study.location import Location, as_location
from study.records import (ABLATE, CONFIG_PREFIX, READS, REPORTS, RETRAIN, RUNNING, TABLE_KEY, TRIALS, VERSION_KEY, Table,
                           plain, to_table)

TRIALS_FILE = "trials.parquet"
# Parts read at once from an object store (each a round trip or more; pyarrow lets go of the GIL
# while it waits).
REMOTE_READERS = 16
# The bytes of its own report parts that a driver keeps for the compaction at its end, which
# then reads from an object store only the parts that others wrote (a part is tens of kB).
KEEP_WRITTEN_BYTES = 64 << 20


class StoreError(ValueError):
    """A file of the results store cannot be read as ours; the message names it and the fix."""


# --- files ----------------------------------------------------------------------------------

def write_part(table: pa.Table, path: "Location | Path") -> pa.Buffer:
    """Write ``table`` to ``path`` so that a reader sees the whole file or none of it; return its bytes."""
    sink = pa.BufferOutputStream()  # whole in memory first: a failed write sends nothing
    pq.write_table(table, sink)
    data = sink.getvalue()
    as_location(path).write_bytes(data.to_pybytes())
    return data


def _part_name() -> str:
    # Nanosecond time first: parts sort in the order they were written.
    return f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"


WRITER_PREFIX = "driver-"  # the folder of the report parts one driver wrote


def _writer_folder_name() -> str:
    return f"{WRITER_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def _data_files(folder: Location) -> list[Location]:
    """The files a dataset reader sees in ``folder``, those in the drivers' folders included (all
    but those whose name, or a folder's on the way, starts with '.' or '_'), in the order they
    were written."""
    files = []
    for relative in folder.files_below():
        steps = relative.split("/")
        if any(step.startswith((".", "_")) for step in steps):
            continue
        if len(steps) > 2 or (len(steps) == 2 and not steps[0].startswith(WRITER_PREFIX)):
            raise StoreError(f"{folder / steps[0]} is a folder, but {folder} should hold Parquet part files only "
                             f"(pyarrow would read into it); move it out of {folder}")
        files.append(folder / relative)
    return sorted(files, key=lambda path: (path.name, str(path)))


def _checked_schema(path: Location, table: Table, data: pa.Buffer | None = None) -> pa.Schema:
    """The schema of one part (read from ``data``, its bytes, if given), once it is known to be
    ours; else StoreError saying what to do."""
    move = f"move it out of {path.parent} (every reader of the folder reads every file in it)"
    try:
        schema = (pq.read_schema(pa.BufferReader(data)) if data is not None
                  else pq.read_schema(path.fs_path, filesystem=path.fs))
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path} is not a readable Parquet file ({err}); {move}") from None
    metadata = schema.metadata or {}
    version = metadata.get(VERSION_KEY)
    if version is None:
        raise StoreError(f"{path} is not a semiseg-study {table.name} file (no {VERSION_KEY.decode()} metadata); {move}")
    if version not in {str(v).encode() for v in READS}:
        raise StoreError(f"{path} has schema version {version.decode(errors='replace')}, this code reads versions "
                         f"{', '.join(map(str, READS))}; {move}, or read it with the semiseg-study release that wrote it")
    written = metadata.get(TABLE_KEY, table.name.encode())
    if written != table.name.encode():
        raise StoreError(f"{path} holds the {written.decode(errors='replace')} table, not {table.name}; {move}")
    for f in table.required(int(version)):
        if f.name not in schema.names:
            raise StoreError(f"{path} lacks the required column {f.name!r}; {move}")
        if schema.field(f.name).type != f.type:
            raise StoreError(f"{path}: column {f.name!r} has type {schema.field(f.name).type}, expected {f.type}; {move}")
    return schema


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for parts written at different times.

    permissive: a config column that is int64 in one part and float64 in another reads as float64.
    A config column that is bool in one part and string in another (a bool field that became a
    switch, whose 'auto' is a string) reads as string, the bools as 'true' and 'false'. Any other
    conflict stays an error: a number next to a string is a bug, not a switch.
    """
    types: dict[str, set[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            if f.name.startswith(CONFIG_PREFIX) and f.type != pa.null():
                types.setdefault(f.name, set()).add(f.type)
    textual = {name for name, kinds in types.items() if kinds == {pa.bool_(), pa.string()}}
    if textual:
        schemas = [pa.schema([f.with_type(pa.string()) if f.name in textual else f for f in schema],
                             metadata=schema.metadata) for schema in schemas]
    return pa.unify_schemas(schemas, promote_options="permissive")


def _unified(schemas: list[pa.Schema], table: Table, folder: Location) -> pa.Schema:
    try:
        return table.with_metadata(unify([table.fields, *schemas]))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise StoreError(f"the parts of {folder} disagree on a column's type ({err}); find the odd part with "
                         f"`pyarrow.parquet.read_schema` and move it out of {folder}") from None


class _Parts(NamedTuple):
    """The part files of a folder, the schema that unifies them, and, from an object store,
    each part's bytes (read once: opening a part there costs a round trip or two each time)."""
    paths: list[Location]
    schema: pa.Schema
    data: list[pa.Buffer] | None


def _parts(folder: Location, table: Table, written: Mapping[Location, pa.Buffer] | None = None) -> _Parts:
    """The part files of ``folder``, each checked to be ours, and the schema that unifies them.
    ``written``: the bytes of parts this process wrote there, which need no fetching."""
    paths, written = _data_files(folder), written or {}
    if folder.local or not paths:
        return _Parts(paths, _unified([_checked_schema(path, table) for path in paths], table, folder), None)

    def fetch(path: Location) -> pa.Buffer:
        if path in written:
            return written[path]
        try:
            return pa.py_buffer(path.read_bytes())
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"{path} cannot be read ({err}); check that the object store answers, "
                             f"or move it out of {folder}") from None

    # Parts are small (rows of scores): each is fetched whole, side by side (pyarrow lets go of the
    # GIL while it waits), in the parts' order, and then checked and read from memory. A single
    # part too: a lookup and a GET, where its schema and then its rows read in place take five.
    with ThreadPoolExecutor(max_workers=min(REMOTE_READERS, len(paths))) as pool:
        data = list(pool.map(fetch, paths))
    schemas = [_checked_schema(path, table, part) for path, part in zip(paths, data)]
    return _Parts(paths, _unified(schemas, table, folder), data)


def read_table(folder: "Location | Path", table: Table, columns: list[str] | None = None) -> pa.Table:
    """Every part of ``folder`` as one table of the unified schema, the first row of each key kept."""
    folder = as_location(folder)
    return _read(_parts(folder, table), table, folder, columns)


def _read(parts: _Parts, table: Table, folder: Location, columns: list[str] | None = None) -> pa.Table:
    paths, schema = parts.paths, parts.schema
    if not paths:
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    data = parts.data or [None] * len(paths)
    parquet = pads.ParquetFileFormat()
    try:
        # An explicit schema: a config column that a part lacks reads as null. Parts fetched
        # already are read from memory, by the same reader.
        if parts.data is None:
            dataset = pads.dataset([p.fs_path for p in paths], schema=schema, format=parquet, filesystem=folder.fs)
        else:
            dataset = pads.FileSystemDataset([parquet.make_fragment(pa.BufferReader(d)) for d in data], schema, parquet)
        rows = dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as err:
        damaged = next((p for p, d in zip(paths, data) if not _readable(p, d)), folder)
        raise StoreError(f"{damaged} is damaged ({err}); move it out of {folder}") from None
    return first_of_each_key(rows, list(table.key))


def _readable(path: Location, data: pa.Buffer | None = None) -> bool:
    try:
        if data is None:
            pq.read_table(path.fs_path, filesystem=path.fs)
        else:
            pq.read_table(pa.BufferReader(data))
        return True
    except (pa.ArrowException, OSError):
        return False


def first_of_each_key(rows: pa.Table, key: list[str]) -> pa.Table:
    """Rows whose key occurs for the first time, in their order."""
    if rows.num_rows == 0:
        return rows
    numbered = rows.select(key).append_column("_row", pa.array(range(rows.num_rows), pa.int64()))
    first = numbered.group_by(key, use_threads=False).aggregate([("_row", "min")]).column("_row_min")
    if len(first) == rows.num_rows:
        return rows
    return rows.take(pc.sort_indices(first))


# --- the store ------------------------------------------------------------------------------

class ResultStore:
    """The Parquet tables of one study: reports appended exactly once, trials rewritten, retrain and
    ablation runs appended.

    One process writes a study folder (the driver); any number may read it.
    """

    def __init__(self, study_dir: "str | Path | Location", study: str) -> None:
        self.study_dir = as_location(study_dir)
        self.study = study
        self.reports_dir = self.study_dir / "results" / "reports"
        self.trials_dir = self.study_dir / "results" / "trials"
        self.retrain_dir = self.study_dir / "retrain"
        self.ablate_dir = self.study_dir / "ablate"
        self._writer_dir: Location | None = None  # this store's folder of report parts, named at its first part
        self._written: dict[Location, pa.Buffer] = {}  # remote parts it wrote, up to KEEP_WRITTEN_BYTES
        self._written_bytes = 0
        self._keys: set[tuple[str, int]] | None = None  # loaded from the parts on first need
        self._schema: pa.Schema | None = None             # unified schema of the parts, to refuse conflicts early
        # The trials table as last written: the driver rewrites it on every report, and reading
        # the file back each time to merge would double that I/O (one writer per folder).
        self._trial_rows: dict[str, dict[str, Any]] | None = None

    # --- reports ----------------------------------------------------------------------
    def existing_keys(self) -> set[tuple[str, int]]:
        """The (trial_id, iteration) of every stored report."""
        return set(self._stored_keys())

    def _stored_keys(self) -> set[tuple[str, int]]:
        if self._keys is None:
            parts = _parts(self.reports_dir, REPORTS)
            self._schema = parts.schema
            keys = _read(parts, REPORTS, self.reports_dir, list(REPORTS.key))
            self._keys = set(zip(keys.column("trial_id").to_pylist(), keys.column("iteration").to_pylist()))
        return self._keys

    def append_reports(self, rows: list[dict[str, Any]]) -> int:
        """Store the rows whose (trial_id, iteration) is new, as one part; return how many."""
        stored = self._stored_keys()
        fresh: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows:
            if row.get("iteration") is None:
                raise ValueError(f"report row of trial {row.get('trial_id')!r} has no iteration")
            key = (row.get("trial_id"), int(plain(row["iteration"])))
            if key not in stored:
                fresh.setdefault(key, row)
        if not fresh:
            return 0
        part = to_table(list(fresh.values()), REPORTS, self.study)
        try:
            # Refuse now rather than write a part that makes the whole folder unreadable.
            unified = unify([self._schema, part.schema])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"these reports do not fit the stored ones: {err}") from None
        if self._writer_dir is None:
            self._writer_dir = self.reports_dir / _writer_folder_name()
        path = self._writer_dir / _part_name()
        data = write_part(part, path)
        if not path.local and self._written_bytes + data.size <= KEEP_WRITTEN_BYTES:
            self._written[path], self._written_bytes = data, self._written_bytes + data.size
        stored.update(fresh)
        self._schema = unified
        return len(fresh)

    def reports(self) -> pa.Table:
        """Every stored report, config columns unified across parts (missing = null)."""
        return read_table(self.reports_dir, REPORTS)

    def compact(self) -> int:
        """Merge the report parts into one file at the top of the folder; return how many parts it
        replaced.

        The merged part is written before the parts it holds are removed, so a crash in between
        leaves duplicates (which readers drop and the next compaction removes), never a loss. Only
        the parts read are removed: a driver's folder goes in one batch delete if, listed again
        after the merge, it holds exactly those; otherwise its parts go one by one.
        """
        parts = _parts(self.reports_dir, REPORTS, self._written)
        paths = parts.paths
        if len(paths) < 2 and all(path.parent == self.reports_dir for path in paths):
            return 0
        merged = _read(parts, REPORTS, self.reports_dir)
        write_part(merged, self.reports_dir / _part_name())
        # The parts listed above, never a fresh listing: a part written meanwhile is not in `merged`.
        read_in: dict[Location, set[Location]] = {}
        for path in paths:
            read_in.setdefault(path.parent, set()).add(path)
        for folder, read in read_in.items():
            if folder != self.reports_dir and {folder / name for name in folder.files_below()} == read:
                folder.delete_tree()
            else:
                for path in sorted(read, key=str):
                    path.delete()
        # Reports appended after this go to a new folder.
        self._writer_dir, self._written, self._written_bytes = None, {}, 0
        return len(paths)

    # --- trials -----------------------------------------------------------------------
    def write_trials(self, rows: list[dict[str, Any]]) -> None:
        """Replace the rows of these trials (by trial_id), keep the other trials, rewrite the file."""
        if self._trial_rows is None:
            self._trial_rows = {row["trial_id"]: row for row in self.trials().to_pylist()}
        merged = dict(self._trial_rows)
        for row in rows:
            if not isinstance(row.get("trial_id"), str) or not row["trial_id"]:
                raise ValueError(f"trials row without a trial_id: {row!r:.200}")
            # A trial restored mid-run reports before Tune calls on_trial_start: it is running.
            merged[row["trial_id"]] = {**row, "status": row.get("status") or RUNNING}
        write_part(to_table(list(merged.values()), TRIALS, self.study), self.trials_dir / TRIALS_FILE)
        self._trial_rows = merged  # only once the file holds them

    def trials(self) -> pa.Table:
        """One row per trial (empty, with the fixed columns, before the first write). A store that
        wrote the table returns what it wrote without reading it back (one writer per folder: the
        study's summary at its end costs no request)."""
        if self._trial_rows is not None:
            return to_table(list(self._trial_rows.values()), TRIALS, self.study)
        return read_table(self.trials_dir, TRIALS)

    # --- retrain ----------------------------------------------------------------------
    def append_retrain(self, rows: list[dict[str, Any]]) -> None:
        """Store finished retrain runs, one part per call (written atomically)."""
        if rows:
            write_part(to_table(rows, RETRAIN, self.study), self.retrain_dir / _part_name())

    def retrain(self) -> pa.Table:
        """Every retrain run, once per (candidate, seed, iterations)."""
        return read_table(self.retrain_dir, RETRAIN)


    # --- ablate -----------------------------------------------------------------------
    def append_ablate(self, rows: list[dict[str, Any]]) -> None:
        """Store the rows of finished ablation runs, one part per call (written atomically)."""
        if rows:
            write_part(to_table(rows, ABLATE, self.study), self.ablate_dir / _part_name())

    def ablate(self) -> pa.Table:
        """Every ablation row, once per (run_id, variant)."""
        return read_table(self.ablate_dir, ABLATE)
