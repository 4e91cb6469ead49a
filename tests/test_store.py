"""The Parquet results store: real files in tmp_path, read back by pyarrow, pandas and DuckDB."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from study import records
from study import store as store_module
from study.cli import status_table
from study.records import REPORTS, SCHEMA_VERSION, TRIALS, VERSION_KEY, evaluation_metrics, report_row
from study.store import ResultStore, StoreError
from trainer.evaluation import LOSS_PARTS, Evaluation

REPORT_FIELDS, TRIAL_FIELDS = REPORTS.fields, TRIALS.fields

CONFIG = {"dataset": "digits", "lr": 0.01, "iterations": 12, "hflip": False, "aspp_dilations": [6, 12, 18, 24],
          "contrastive_loss": "paper"}


def _evaluation(iteration: int, miou: float = 0.5) -> Evaluation:
    return Evaluation(iteration=iteration, split="val", miou=miou, iou=[0.9, float("nan"), 0.1],
                      losses={part: 0.1 * (i + 1) for i, part in enumerate(LOSS_PARTS)},
                      bank_fill=[1.0, 0.5, 0.0], images_per_second=123.5, lr=0.009, train_seconds=4.25)


def _row(trial: str, iteration: int, config: dict | None = None, miou: float = 0.5) -> dict:
    return report_row("s", trial, evaluation_metrics(_evaluation(iteration, miou)),
                      CONFIG if config is None else config, "10.0.0.7", 7.5)


def _parts(folder: Path) -> list[Path]:
    """The part files a dataset reader reads, the drivers' folders included, in the order written."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def test_reports_round_trip_keeps_every_value_and_type(tmp_path):
    store = ResultStore(tmp_path, "s")
    assert store.append_reports([_row("t1", 3), _row("t1", 6, miou=0.75)]) == 2

    table = ResultStore(tmp_path, "s").reports()
    assert table.schema.names[:len(REPORT_FIELDS)] == REPORT_FIELDS.names
    for field in REPORT_FIELDS:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("config.lr").type == pa.float64()
    assert table.schema.field("config.iterations").type == pa.int64()
    assert table.schema.field("config.hflip").type == pa.bool_()
    assert table.schema.field("config.aspp_dilations").type == pa.string()

    first, second = table.to_pylist()
    assert first["schema_version"] == SCHEMA_VERSION and first["study"] == "s" and first["trial_id"] == "t1"
    assert (first["iteration"], second["iteration"]) == (3, 6)
    assert (first["val_miou"], second["val_miou"]) == (0.5, 0.75)
    assert first["iou"][0] == 0.9 and math.isnan(first["iou"][1]) and first["iou"][2] == 0.1
    assert [first[f"loss_{p}"] for p in LOSS_PARTS] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert first["bank_fill"] == [1.0, 0.5, 0.0]
    assert (first["images_per_second"], first["lr"], first["train_seconds"]) == (123.5, 0.009, 4.25)
    assert (first["time_total_s"], first["node"]) == (7.5, "10.0.0.7")
    assert first["timestamp"].tzinfo is not None
    assert abs(first["timestamp"] - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
    assert first["config.lr"] == 0.01 and first["config.iterations"] == 12 and first["config.hflip"] is False
    assert json.loads(first["config.aspp_dilations"]) == [6, 12, 18, 24]

    (part,) = _parts(tmp_path / "results" / "reports")
    assert re.fullmatch(r"part-\d{19}-[0-9a-f]{8}\.parquet", part.name)
    assert pq.read_metadata(part).metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()


def test_a_report_row_takes_a_real_evaluation():
    from trainer.fit import Evaluation as TrainerEvaluation

    assert TrainerEvaluation is Evaluation  # the records' columns follow the trainer's own class
    evaluation = Evaluation(iteration=4, split="val", miou=0.25, iou=[0.5, 0.0], losses=dict.fromkeys(LOSS_PARTS, 1.0),
                            bank_fill=[0.5, 0.5], images_per_second=10.0, lr=0.1, train_seconds=2.0)
    row = report_row("s", "t", evaluation_metrics(evaluation), {"lr": 0.1}, "host", 3.0)
    assert set(row) == set(REPORT_FIELDS.names) | {"config.lr"}
    assert (row["val_miou"], row["loss_total"], row["train_seconds"]) == (0.25, 1.0, 2.0)
    with pytest.raises(ValueError, match="split 'test'"):
        evaluation_metrics(Evaluation(**{**evaluation.as_dict(), "split": "test"}))
    with pytest.raises(ValueError, match="unknown loss part"):
        evaluation_metrics(Evaluation(**{**evaluation.as_dict(), "losses": {"new_term": 1.0}}))


def test_schemas_are_the_fixed_columns_then_the_config():
    schema = REPORTS.schema(CONFIG)
    assert schema.names == REPORT_FIELDS.names + [f"config.{k}" for k in CONFIG]
    assert schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
    assert TRIALS.schema({"lr": 0.1}).names == TRIAL_FIELDS.names + ["config.lr"]


def test_duplicate_keys_are_dropped_within_a_call_and_after_a_restart(tmp_path):
    store = ResultStore(tmp_path, "s")
    assert store.append_reports([_row("t1", 3), _row("t1", 3, miou=0.9), _row("t2", 3)]) == 2
    assert store.append_reports([_row("t1", 3), _row("t1", 6)]) == 1
    assert store.append_reports([_row("t1", 6)]) == 0
    assert len(_parts(tmp_path / "results" / "reports")) == 2  # nothing new, no file

    resumed = ResultStore(tmp_path, "s")  # a restarted driver replays what Tune had sent
    assert resumed.existing_keys() == {("t1", 3), ("t2", 3), ("t1", 6)}
    assert resumed.append_reports([_row("t1", 3), _row("t2", 3), _row("t1", 6), _row("t2", 6)]) == 1

    table = ResultStore(tmp_path, "s").reports()
    keys = list(zip(table.column("trial_id").to_pylist(), table.column("iteration").to_pylist()))
    assert sorted(keys) == [("t1", 3), ("t1", 6), ("t2", 3), ("t2", 6)]
    assert table.filter(pa.compute.equal(table.column("iteration"), 3)).column("val_miou").to_pylist() == [0.5, 0.5]


def test_parts_with_different_config_columns_read_together(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("paper", 3, {"lr": 0.01, "contrastive_loss": "paper"})])
    store.append_reports([_row("infonce", 3, {"lr": 1, "contrastive_loss": "infonce", "temperature": 0.2})])

    table = ResultStore(tmp_path, "s").reports()
    assert table.schema.field("config.temperature").type == pa.float64()
    assert table.schema.field("config.lr").type == pa.float64()  # int in one part, float in the other
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert rows["paper"]["config.temperature"] is None
    assert rows["infonce"]["config.temperature"] == 0.2 and rows["infonce"]["config.lr"] == 1.0


def test_a_report_whose_config_type_conflicts_is_refused_before_writing(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t1", 3, {"lr": 0.01})])
    with pytest.raises(ValueError, match="config.lr"):
        store.append_reports([_row("t2", 3, {"lr": "fast"})])
    assert len(_parts(tmp_path / "results" / "reports")) == 1
    assert ResultStore(tmp_path, "s").reports().num_rows == 1


def test_pandas_pyarrow_and_duckdb_read_the_folders(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    store = ResultStore(tmp_path, "s")
    for iteration in (3, 6):
        store.append_reports([_row("t1", iteration), _row("t2", iteration)])
    store.write_trials([{"trial_id": "t1", "status": "finished", "best_val_miou": 0.5,
                         **{f"config.{k}": v for k, v in CONFIG.items()}}])
    reports, trials = tmp_path / "results" / "reports", tmp_path / "results" / "trials"
    expected = REPORT_FIELDS.names + [f"config.{k}" for k in CONFIG]

    frame = pd.read_parquet(reports)
    assert list(frame.columns) == expected and len(frame) == 4
    assert ds.dataset(reports).to_table().num_rows == 4
    # While a study runs, its driver's parts are in a folder of their own: DuckDB globs them with **.
    parts, trials_parts = f"read_parquet('{reports}/**/*.parquet')", f"read_parquet('{trials}/*.parquet')"
    assert duckdb.sql(f"select * from {parts}").columns == expected
    assert duckdb.sql(f"select count(*), max(val_miou) from {parts}").fetchall() == [(4, 0.5)]
    assert duckdb.sql(f"select trial_id, status from {trials_parts}").fetchall() == [("t1", "finished")]
    assert list(pd.read_parquet(trials).columns) == TRIAL_FIELDS.names + [f"config.{k}" for k in CONFIG]
    # Compacted (the end of a study), they are one file at the top: both globs read it.
    assert store.compact() == 2 and [p.parent for p in _parts(reports)] == [reports]
    for pattern in ("*.parquet", "**/*.parquet"):
        assert duckdb.sql(f"select count(*) from read_parquet('{reports}/{pattern}')").fetchall() == [(4,)]
    assert len(pd.read_parquet(reports)) == 4


def test_temp_files_are_invisible_to_every_reader(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t1", 3)])
    reports = tmp_path / "results" / "reports"
    (part,) = _parts(reports)
    # What a writer killed mid-write leaves behind: half a file under a temp name, in the driver's
    # folder, and at the top of the folder (a compaction's merged part).
    for folder in (part.parent, reports):
        (folder / ".part-1-deadbeef.parquet.0a1b2c3d.tmp").write_bytes(b"PAR1 half a file")

    assert ResultStore(tmp_path, "s").reports().num_rows == 1
    assert ds.dataset(reports).to_table().num_rows == 1
    assert len(pd.read_parquet(reports)) == 1
    assert duckdb.sql(f"select count(*) from read_parquet('{reports}/**/*.parquet')").fetchall() == [(1,)]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t1", 3)])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        store.append_reports([_row("t1", 6)])
    monkeypatch.undo()
    assert len(os.listdir(tmp_path / "results" / "reports")) == 1  # no part, no temp file
    assert store.append_reports([_row("t1", 6)]) == 1  # the key was not marked as stored


@pytest.mark.parametrize("read", [lambda s: s.reports(), lambda s: s.existing_keys(),
                                  lambda s: s.append_reports([_row("t9", 3)])])
def test_a_corrupt_part_is_an_error_naming_the_file(tmp_path, read):
    ResultStore(tmp_path, "s").append_reports([_row("t1", 3)])
    bad = tmp_path / "results" / "reports" / "part-x.parquet"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(StoreError, match=re.escape(str(bad))) as caught:
        read(ResultStore(tmp_path, "s"))
    assert "not a readable Parquet file" in str(caught.value) and "move it out" in str(caught.value)


def test_a_foreign_parquet_file_is_an_error_naming_the_file(tmp_path):
    ResultStore(tmp_path, "s").append_reports([_row("t1", 3)])
    foreign = tmp_path / "results" / "reports" / "export.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), foreign)
    with pytest.raises(StoreError, match=re.escape(str(foreign))) as caught:
        ResultStore(tmp_path, "s").reports()
    assert "move it out" in str(caught.value)


def test_a_part_of_another_schema_version_or_table_is_an_error(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t1", 3)])
    (part,) = _parts(tmp_path / "results" / "reports")
    table = pq.read_table(part)
    newer = part.with_name("part-9-newer.parquet")
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: str(SCHEMA_VERSION + 1).encode()}), newer)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        ResultStore(tmp_path, "s").reports()
    newer.unlink()

    store.write_trials([{"trial_id": "t1", "status": "running"}])
    misplaced = part.with_name("trials.parquet")
    shutil.copy(tmp_path / "results" / "trials" / "trials.parquet", misplaced)
    with pytest.raises(StoreError, match="trials table"):
        ResultStore(tmp_path, "s").reports()


def test_an_empty_store_reads_as_empty_tables_with_the_fixed_columns(tmp_path):
    store = ResultStore(tmp_path / "nothing-yet", "s")
    assert store.reports().num_rows == 0 and store.reports().schema.names == REPORT_FIELDS.names
    assert store.trials().num_rows == 0 and store.trials().schema.names == TRIAL_FIELDS.names
    assert store.existing_keys() == set() and store.compact() == 0
    assert status_table(store.trials().to_pylist()) == "no trials yet"


def test_compact_merges_the_parts_into_one_without_changing_the_rows(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t1", 3, {"lr": 0.01})])
    store.append_reports([_row("t2", 3, {"lr": 0.02, "temperature": 0.1})])
    store.append_reports([_row("t1", 6, {"lr": 0.01})])
    before = store.reports()
    assert store.compact() == 3
    (merged,) = _parts(tmp_path / "results" / "reports")
    after = ResultStore(tmp_path, "s").reports()
    assert after.drop_columns(["iou"]).equals(before.drop_columns(["iou"]))
    assert str(after.column("iou").to_pylist()) == str(before.column("iou").to_pylist())  # NaN != NaN
    assert pq.read_metadata(merged).metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()

    # A crash between the rename and the removal leaves a part twice: read once, compacted away.
    shutil.copy(merged, merged.with_name("part-0-00000000.parquet"))
    assert ResultStore(tmp_path, "s").reports().num_rows == 3
    assert store.compact() == 2 and ResultStore(tmp_path, "s").reports().num_rows == 3
    assert store.append_reports([_row("t2", 3)]) == 0  # the compacted store still knows its keys


def test_write_trials_replaces_rows_by_trial_id_and_keeps_the_others(tmp_path):
    store = ResultStore(tmp_path, "s")
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    store.write_trials([
        {"trial_id": "a", "status": "running", "started": started, "config.aspp_dilations": [6, 12]},
        {"trial_id": "b", "status": "running", "config.lr": 0.1},
    ])
    store.write_trials([{"trial_id": "b", "status": "stopped", "stop_reason": "asha", "best_val_miou": 0.4,
                         "iterations": 6, "wall_seconds": 12.5, "config.lr": 0.1},
                        {"trial_id": "c"}])  # restored mid-run, before Tune said it started

    rows = {r["trial_id"]: r for r in ResultStore(tmp_path, "s").trials().to_pylist()}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"]["status"] == "running" and rows["a"]["started"] == started
    assert rows["a"]["config.aspp_dilations"] == "[6, 12]"
    assert rows["b"]["status"] == "stopped" and rows["b"]["stop_reason"] == "asha"
    assert (rows["b"]["best_val_miou"], rows["b"]["iterations"], rows["b"]["wall_seconds"]) == (0.4, 6, 12.5)
    assert rows["c"]["status"] == "running" and rows["c"]["study"] == "s"
    assert os.listdir(tmp_path / "results" / "trials") == ["trials.parquet"]

    # The callback of a resumed driver writes back what it read: types survive the round trip.
    store.write_trials(list(rows.values()))
    assert ResultStore(tmp_path, "s").trials().to_pylist() == list(rows.values())

    # The store that wrote the table returns it without reading the file back, as a reader gets it.
    read = ResultStore(tmp_path, "s").trials()
    (tmp_path / "results" / "trials" / "trials.parquet").unlink()
    assert store.trials().equals(read, check_metadata=True)
    assert ResultStore(tmp_path, "s").trials().num_rows == 0

    with pytest.raises(ValueError, match="status 'done'"):
        store.write_trials([{"trial_id": "a", "status": "done"}])
    with pytest.raises(ValueError, match="unknown column 'best_miou'"):
        store.write_trials([{"trial_id": "a", "status": "finished", "best_miou": 0.5}])


def test_status_table_lists_the_best_trial_first(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.write_trials([
        {"trial_id": "low", "status": "stopped", "best_val_miou": 0.123, "iterations": 3, "wall_seconds": 5.0,
         "stop_reason": "asha"},
        {"trial_id": "none", "status": "errored", "stop_reason": "raised", "error": "ValueError: boom"},
        {"trial_id": "high", "status": "finished", "best_val_miou": 0.6789, "iterations": 12, "wall_seconds": 61.4},
        {"trial_id": "mid", "status": "running", "best_val_miou": 0.5, "iterations": 6, "wall_seconds": 30.0},
    ])
    lines = status_table(store.trials().to_pylist()).splitlines()
    assert lines[0].split()[:2] == ["trial", "status"]
    assert [line.split()[0] for line in lines[1:]] == ["high", "mid", "low", "none"]
    assert lines[1].split()[:5] == ["high", "finished", "67.9", "12", "61"]
    assert lines[3].split()[2:] == ["12.3", "3", "5", "asha"]
    assert "raised: ValueError: boom" in lines[4]


def test_the_docstring_documents_every_column():
    doc = records.__doc__
    documented = set(re.findall(r"^(\w+)\s{2,}", doc, flags=re.M)) - {"column"}
    assert set().union(*(t.names for t in records.TABLES.values())) <= documented


def test_the_store_page_tables_name_every_column_of_the_records():
    page = (Path(__file__).parent.parent / "docs" / "store.md").read_text()
    section = page[page.index("## The columns"):page.index("## Writes")]
    for table in records.TABLES.values():
        start = section.index(f"| {table.name} column |")
        rows = section[start:section.index("\n\n", start)]
        named = {name.strip() for line in rows.splitlines()[2:] for name in line.split("|")[1].split(",")}
        assert set(table.names) <= named, (table.name, sorted(set(table.names) - named))


def test_a_part_of_schema_version_2_reads_with_its_newer_columns_as_null(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("new", 3)])
    (part,) = _parts(tmp_path / "results" / "reports")
    old = pq.read_table(part).drop_columns([c.name for c in REPORTS.columns if c.since > 2])
    pq.write_table(old.replace_schema_metadata({**old.schema.metadata, VERSION_KEY: b"2"}),
                   part.with_name("part-0-00000002.parquet"))  # what a version-2 driver wrote
    part.unlink()
    store = ResultStore(tmp_path, "s")
    store.append_reports([{**_row("new", 3), "trial_id": "v3", "test_miou": 0.25, "devices": 1.0,
                           "device_type": "cpu"}])
    rows = {r["trial_id"]: r for r in store.reports().to_pylist()}
    assert rows["new"]["val_miou"] == 0.5 and rows["new"]["test_miou"] is None and rows["new"]["device_type"] is None
    assert (rows["v3"]["test_miou"], rows["v3"]["devices"], rows["v3"]["device_type"]) == (0.25, 1.0, "cpu")
    assert store.compact() == 2 and ResultStore(tmp_path, "s").reports().num_rows == 2


def test_a_resumed_driver_takes_a_trials_progress_from_reports_stored_after_its_row(tmp_path):
    """Killed between storing a report and rewriting trials.parquet: the row says 6, the reports
    reach 9. A resumed trial that ASHA stops at its first replayed result (6) never reports 9
    again, so the resumed driver's row must take its progress from the reports."""
    from study.callbacks import StoreCallback
    from study.spec import StudySpec

    store = ResultStore(tmp_path, "s")
    store.append_reports([_row("t", 3, miou=0.4), _row("t", 6, miou=0.6), _row("t", 9, miou=0.5)])
    store.write_trials([{"trial_id": "t", "status": "running", "iterations": 6, "best_val_miou": 0.6,
                         "last_val_miou": 0.6}])
    callback = StoreCallback(tmp_path, StudySpec(name="s"), show_progress=False)
    row = {r["trial_id"]: r for r in [*callback.store.trials().to_pylist()]}["t"]
    assert row["iterations"] == 6  # the file as the killed driver left it
    caught_up = callback._trials["t"]
    assert (caught_up["iterations"], caught_up["last_val_miou"], caught_up["best_val_miou"]) == (9, 0.5, 0.6)


class _Trial:
    """What StoreCallback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config


def _trial_on_disk(folder: Path, trial_id: str) -> dict:
    """The trial's row as trials.parquet holds it now."""
    return {r["trial_id"]: r for r in ResultStore(folder, "s").trials().to_pylist()}[trial_id]


def _result(iteration: int, miou: float) -> dict:
    return {**evaluation_metrics(_evaluation(iteration, miou)), "iteration": iteration, "time_total_s": 1.0 * iteration}


def test_progress_alone_rewrites_the_trials_table_at_most_once_a_period_and_a_kill_loses_none_of_it(tmp_path):
    """A status change is written at once; a result that only moves progress waits for the period
    (each rewrite is a request on an object store). A driver killed in between leaves the row
    behind its reports, and the driver that resumes takes the progress from them."""
    from study.callbacks import StoreCallback
    from study.spec import StudySpec

    spec = StudySpec(name="s")
    trial = _Trial("t", dict(spec.search_space.paper_point))
    driver = StoreCallback(tmp_path, spec, show_progress=False, progress_every_s=3600)
    on_disk = lambda: (driver.writes.flush(), _trial_on_disk(tmp_path, "t"))[1]  # noqa: E731 - once written
    driver.on_trial_start(0, [], trial)
    assert on_disk()["status"] == "running"
    for iteration, miou in ((100, 0.4), (200, 0.6), (300, 0.5)):
        driver.on_trial_result(0, [], trial, _result(iteration, miou))
    assert (on_disk()["status"], on_disk()["iterations"], on_disk()["best_val_miou"]) == ("running", None, None)
    assert ResultStore(tmp_path, "s").reports().num_rows == 3  # the reports never wait

    resumed = StoreCallback(tmp_path, spec, show_progress=False)  # the first driver killed here
    row = resumed._trial_row(trial)
    assert (row["iterations"], row["last_val_miou"], row["best_val_miou"]) == (300, 0.5, 0.6)

    driver.on_experiment_end([trial])  # a driver that ends writes what it held back
    assert (on_disk()["iterations"], on_disk()["best_val_miou"]) == (300, 0.6)
    eager = StoreCallback(tmp_path / "eager", spec, show_progress=False, progress_every_s=0)
    for iteration in (100, 200):
        eager.on_trial_result(0, [], trial, _result(iteration, 0.5))
    eager.writes.flush()
    assert _trial_on_disk(tmp_path / "eager", "t")["iterations"] == 200


def test_held_back_progress_is_written_at_the_next_step_once_the_period_has_passed(tmp_path):
    """Tune's loop steps many times a second: progress waits for the period, not for the next event."""
    from study.callbacks import StoreCallback
    from study.spec import StudySpec

    spec = StudySpec(name="s")
    trial = _Trial("t", dict(spec.search_space.paper_point))
    driver = StoreCallback(tmp_path, spec, show_progress=False, progress_every_s=3600)
    on_disk = lambda: (driver.writes.flush(), _trial_on_disk(tmp_path, "t"))[1]  # noqa: E731 - once written
    driver.on_trial_start(0, [], trial)
    driver.on_trial_result(0, [], trial, _result(100, 0.4))
    driver.on_step_end(0, [])  # within the period: still held back
    assert on_disk()["iterations"] is None
    driver.progress_every_s = 0  # the period has passed
    driver.on_step_end(0, [])
    assert (on_disk()["iterations"], on_disk()["best_val_miou"]) == (100, 0.4)
    written = (tmp_path / "results" / "trials" / "trials.parquet").stat().st_ino  # a rewrite renames a new file in
    driver.on_step_end(0, [])  # nothing held back: nothing written
    driver.writes.flush()
    assert (tmp_path / "results" / "trials" / "trials.parquet").stat().st_ino == written
