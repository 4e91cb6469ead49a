"""Compaction of the report parts on the loopback S3 server, under faults: a driver killed between
writing the merged part and deleting the parts it merged loses no row (readers see each key once),
and a part written while a compaction runs survives it, even in a driver's folder being removed.

The kill is a real SIGKILL of a separate process, taken at an exact point: its ``Location.delete``
and ``Location.delete_tree`` are wrapped to kill the process itself before the (k+1)-th removal. An injected exception at the same
point would be deterministic too, but it runs the code's ``except``/``finally`` paths and unwinds the
stack, which a dead driver never does; the SIGKILL leaves the bucket exactly as a crash there would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raw_parts import raw_rows, repeated
from study.location import Location, as_location
from study.records import evaluation_metrics, report_row
from study.store import ResultStore
from trainer.evaluation import LOSS_PARTS, Evaluation

REPO = Path(__file__).resolve().parents[1]
KEY = ("trial_id", "iteration")

# The compaction of a driver that dies just before its (k+1)-th removal (of a part, or of a driver's
# folder of parts): the merged part is written, k removals are done, the other parts are still there.
DIES_AT_A_DELETE = textwrap.dedent("""
    import os, signal, sys
    from study.location import Location
    from study.store import ResultStore

    study, survive = sys.argv[1], int(sys.argv[2])
    removed = [0]

    def dying(remove):
        def remove_or_die(self):
            if removed[0] == survive:
                os.kill(os.getpid(), signal.SIGKILL)  # no handler, no finally: the process is gone here
            removed[0] += 1
            remove(self)
        return remove_or_die

    Location.delete, Location.delete_tree = dying(Location.delete), dying(Location.delete_tree)
    ResultStore(study, "s").compact()
    raise SystemExit("the compaction ended without reaching the delete it should die at")
""")


def _row(trial: str, iteration: int) -> dict:
    evaluation = Evaluation(iteration=iteration, split="val", miou=0.1 * iteration + (0.01 if trial == "b" else 0.0),
                            iou=[0.9, float("nan"), 0.1], losses={part: 0.5 for part in LOSS_PARTS},
                            bank_fill=[1.0, 0.5, 0.0], images_per_second=100.0, lr=0.01, train_seconds=1.0)
    return report_row("s", trial, evaluation_metrics(evaluation), {"lr": 0.01, "bank_size": 16}, "10.0.0.7", 2.0)


BATCHES = ([("a", 3), ("b", 3)], [("a", 6)], [("b", 6), ("a", 9)])


def _study(make_bucket, bucket: str) -> tuple[Location, list[tuple[str, int]]]:
    """A study in a fresh bucket whose reports are three parts, as drivers write them: the first
    two by a driver that was killed, the third by the one that resumed it (two drivers' folders)."""
    study = as_location(make_bucket(bucket)) / "s"
    killed, resumed = ResultStore(study, "s"), ResultStore(study, "s")
    for store, batch in zip((killed, killed, resumed), BATCHES):
        assert store.append_reports([_row(*key) for key in batch]) == len(batch)
    return study, sorted(key for batch in BATCHES for key in batch)


def _miou(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["trial_id"], r["iteration"]): r["val_miou"] for r in rows}


@pytest.mark.parametrize("survive", [0, 1], ids=["before-any-delete", "after-one-driver-folder"])
def test_a_driver_killed_inside_a_compaction_loses_no_row_and_readers_see_each_key_once(s3_server, survive):
    _, make_bucket = s3_server
    study, keys = _study(make_bucket, f"compact-killed-{survive}")
    written = raw_rows(study)
    assert sorted(_miou(written)) == keys and len(_parts(study)) == 3
    parts_left = 3 - 2 * survive  # the first driver's folder holds two parts, and goes whole

    died = subprocess.run([sys.executable, "-c", DIES_AT_A_DELETE, str(study), str(survive)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]

    left = raw_rows(study)
    assert sorted(set(_miou(left))) == keys and _miou(left) == _miou(written)  # no row lost, none changed
    assert len(_parts(study)) == 1 + parts_left  # the merged part and the parts not yet deleted
    assert repeated(left, *KEY)  # the crash left duplicates, which the readers must hide
    reports = ResultStore(study, "s").reports().to_pylist()
    assert not repeated(reports, *KEY) and _miou(reports) == _miou(written)

    # A resumed driver knows every key, and the next compaction leaves each row once, in one part.
    again = ResultStore(study, "s")
    assert again.append_reports([_row("a", 9)]) == 0
    assert again.compact() == 1 + parts_left  # every part there, the crashed merge's included
    final = raw_rows(study)
    assert len(_parts(study)) == 1 and not repeated(final, *KEY) and _miou(final) == _miou(written)


@pytest.mark.parametrize("late_writer", ["new", "listed"])
def test_a_part_written_while_a_compaction_runs_survives_it_on_s3(s3_server, monkeypatch, late_writer):
    """A second writer stores a part after the compaction has listed and read the folder, before it
    writes its merged part: the compaction removes only the parts it read, so the new one stays,
    whether that writer's folder is new or one the compaction read (and would remove whole)."""
    from study import store as store_module

    _, make_bucket = s3_server
    study, keys = _study(make_bucket, f"compact-during-{late_writer}")
    other, write, late = ResultStore(study, "s"), store_module.write_part, []
    if late_writer == "listed":
        assert other.append_reports([_row("c", 3)]) == 1
        keys = sorted([*keys, ("c", 3)])

    def merged_after_a_late_part(table, path) -> None:  # noqa: ANN001 - write_part's own
        if not late:  # the compaction's write of its merged part: another part lands first
            late.append(None)  # (that part's own write comes back here, and passes)
            late[0] = other.append_reports([_row("c", 6)])
        return write(table, path)

    monkeypatch.setattr(store_module, "write_part", merged_after_a_late_part)
    read = 3 + (late_writer == "listed")
    assert ResultStore(study, "s").compact() == read
    monkeypatch.undo()
    assert late == [1]
    rows = raw_rows(study)
    assert sorted(_miou(rows)) == sorted([*keys, ("c", 6)]) and not repeated(rows, *KEY)
    assert len(_parts(study)) == 2  # the merged part and the late one
    assert ResultStore(study, "s").compact() == 2
    assert len(_parts(study)) == 1 and sorted(_miou(raw_rows(study))) == sorted([*keys, ("c", 6)])


def _parts(study: Location) -> list[str]:
    """The names of the report part files (what a dataset reader reads)."""
    return sorted(name for name in (study / "results" / "reports").files_below()
                  if not name.rsplit("/", 1)[-1].startswith((".", "_")))


def test_parts_of_different_config_columns_read_from_s3_as_from_a_folder(s3_server, tmp_path):
    """Remote parts are fetched whole and read from memory: the same rows, types and nulls as the
    dataset reader gives for the same parts in a local folder, a bool-then-string switch included."""
    _, make_bucket = s3_server
    remote = ResultStore(as_location(make_bucket("mixed-configs")) / "s", "s")
    local = ResultStore(tmp_path, "s")
    configs = [{"lr": 0.01, "amp": False}, {"lr": 1, "amp": "auto", "temperature": 0.2}, {"lr": 0.1, "amp": True}]
    rows = []
    for trial, config in zip("abc", configs):
        row = {k: v for k, v in _row(trial, 3).items() if not k.startswith("config.")}
        rows.append({**row, "iou": [0.9, 0.5, 0.1], **{f"config.{k}": v for k, v in config.items()}})  # no NaN: == holds
    for store in (remote, local):
        for row in rows:
            store.append_reports([row])
    remote_table, local_table = (ResultStore(s.study_dir, "s").reports() for s in (remote, local))
    assert remote_table.schema == local_table.schema
    assert remote_table.to_pylist() == local_table.to_pylist()
    assert {r["trial_id"]: r["config.amp"] for r in remote_table.to_pylist()} == {"a": "false", "b": "auto", "c": "true"}



def test_the_compaction_reads_back_only_the_parts_other_drivers_wrote_and_removes_folders_whole(
        s3_server, monkeypatch):
    """A driver keeps the bytes of the parts it wrote (up to KEEP_WRITTEN_BYTES) for its compaction,
    which fetches only the others' from the bucket, and removes each driver's folder with one batch
    delete, not part by part (three requests each)."""
    from study import store as store_module

    _, make_bucket = s3_server
    study = as_location(make_bucket("compact-own-parts")) / "s"
    earlier = ResultStore(study, "s")  # a driver that was killed
    for key in (("a", 3), ("b", 3)):
        earlier.append_reports([_row(*key)])
    size = next(iter(earlier._written.values())).size
    monkeypatch.setattr(store_module, "KEEP_WRITTEN_BYTES", 2 * size + size // 2)  # room for two parts
    this = ResultStore(study, "s")
    for key in (("c", 3), ("c", 6), ("c", 9)):
        this.append_reports([_row(*key)])
    written, names = raw_rows(study), _parts(study)
    mine = [name.rsplit("/", 1)[-1] for name in names if name.startswith(f"{this._writer_dir.name}/")]
    others = [name.rsplit("/", 1)[-1] for name in names if not name.startswith(f"{this._writer_dir.name}/")]
    assert len(mine) == 3 and len(others) == 2

    fetched, one_by_one = [], []
    read_bytes = Location.read_bytes
    monkeypatch.setattr(Location, "read_bytes", lambda self: fetched.append(self.name) or read_bytes(self))
    monkeypatch.setattr(Location, "delete", lambda self: one_by_one.append(self.name))
    assert this.compact() == 5
    assert sorted(fetched) == sorted([*others, mine[-1]])  # its third part did not fit in what it keeps
    assert one_by_one == [] and len(_parts(study)) == 1  # both drivers' folders went whole
    assert _miou(raw_rows(study)) == _miou(written) and not repeated(raw_rows(study), *KEY)


def test_a_single_remote_part_is_fetched_whole_once_and_read_from_memory(s3_server, monkeypatch):
    """The trials table (one file) and compacted reports (one part) come from a bucket as one GET each
    (with its lookup), not as pyarrow's reads in place (its schema, then its rows: five requests)."""
    _, make_bucket = s3_server
    study = as_location(make_bucket("one-part")) / "s"
    writer = ResultStore(study, "s")
    writer.append_reports([_row("a", 3)])
    writer.write_trials([{"trial_id": "a", "status": "finished", "iterations": 3, "best_val_miou": 0.3}])

    fetched = []
    read_bytes = Location.read_bytes
    monkeypatch.setattr(Location, "read_bytes", lambda self: fetched.append(self.name) or read_bytes(self))
    reader = ResultStore(study, "s")
    assert [(r["trial_id"], r["status"], r["best_val_miou"]) for r in reader.trials().to_pylist()] == \
        [("a", "finished", 0.3)]
    assert _miou(reader.reports().to_pylist()) == _miou([_row("a", 3)])
    assert fetched == ["trials.parquet", _parts(study)[0].rsplit("/", 1)[-1]]
