"""Read a study's Parquet parts exactly as the driver wrote them.

``ResultStore`` readers keep the first row of each key, and ``semiseg-study run`` compacts the
reports at its end: both hide a row written twice. Exactly-once checks read through this module
instead, on a study run with ``--keep-parts`` (no compaction), so a duplicate shows.

Also here, for the resume checks: Tune's own result lines per trial (``tune_results``), one
uninterrupted run of a config to compare a restored trial with, to the bit (``uninterrupted``,
``bit_differences``), and ASHA's rule replayed on a rung file (``asha_decisions``).
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from study.location import Location, as_location
from trainer.evaluation import LOSS_PARTS

if TYPE_CHECKING:
    from trainer.config import TrainConfig

TABLES = {"reports": "results/reports", "trials": "results/trials", "retrain": "retrain", "ablate": "ablate"}


def raw_rows(study: "str | Path | Location", table: str = "reports") -> list[dict[str, Any]]:
    """Every row of every part file of ``table`` in the study folder, duplicates included."""
    folder = as_location(study) / TABLES[table]
    if not folder.exists():
        return []
    rows: list[dict[str, Any]] = []
    for name in folder.files_below():  # the drivers' folders of report parts included
        if not any(step.startswith((".", "_")) for step in name.split("/")):  # what pyarrow's reader sees
            part = folder / name
            # One open per part: pq.read_table(path) opens it twice (schema, then data), and a
            # trials.parquet renamed over in between reads as a torn file. ResultStore's reader
            # opens each part once.
            with part.fs.open_input_file(part.fs_path) as handle:
                rows.extend(pq.read_table(handle).to_pylist())
    return rows


def repeated(rows: list[dict[str, Any]], *key: str) -> dict[tuple, int]:
    """The keys that occur more than once in ``rows``, with their counts (empty: each key once)."""
    counts = Counter(tuple(row[k] for k in key) for row in rows)
    return {k: n for k, n in counts.items() if n > 1}


# --- what Tune itself logged ------------------------------------------------------------------

def tune_results(study: "str | Path | Location") -> dict[str, list[dict[str, Any]]]:
    """Per trial id, every result line of its ``result.json`` in Tune's order (a resumed or
    restored trial appends to it), from the study's local folder or its bucket."""
    import pyarrow.fs as pafs

    tune = as_location(study) / "tune"
    if not tune.exists():
        return {}
    results: dict[str, list[dict[str, Any]]] = {}
    infos = tune.fs.get_file_info(pafs.FileSelector(tune.fs_path, recursive=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == pafs.FileType.File and info.path.endswith("/result.json"):
            with tune.fs.open_input_stream(info.path) as handle:
                for line in handle.read().decode().splitlines():
                    if line.strip():
                        result = json.loads(line)
                        results.setdefault(result["trial_id"], []).append(result)
    return results


# --- an uninterrupted run, to compare a restored trial with -------------------------------------

# What an evaluation reports that a bit-exact resume must reproduce (throughput and seconds are
# the machine's, not the run's).
SAME_BITS = ("val_miou", "iou", "bank_fill", "lr", *(f"loss_{part}" for part in LOSS_PARTS))


class _Enough(Exception):
    """Raised from the evaluation callback: the reference run has what the test compares."""


def uninterrupted(cfg: "TrainConfig", upto: int) -> dict[int, dict[str, Any]]:
    """The evaluations up to iteration ``upto`` of one uninterrupted run of ``cfg`` in this process
    (its own seed and thread count, as a trial runs it), as the trial reports them."""
    import torch

    from study.records import evaluation_metrics
    from trainer.fit import fit

    seen: dict[int, dict[str, Any]] = {}

    def keep(evaluation: Any, trainer: Any) -> None:
        seen[evaluation.iteration] = evaluation_metrics(evaluation)
        if evaluation.iteration >= upto:
            raise _Enough  # the rest of the budget would only cost time

    threads = torch.get_num_threads()
    try:
        fit(cfg, on_evaluation=keep)
    except _Enough:
        pass
    finally:
        torch.set_num_threads(threads)  # the trainer sets cfg.threads for the whole process
    return seen


def bit_differences(reported: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The fields of ``SAME_BITS`` where a reported evaluation and the reference differ in any bit
    (NaN equals NaN: a class absent from val has NaN IoU in both)."""
    def bits(value: Any) -> Any:
        if isinstance(value, float):
            return struct.pack("<d", value)
        if isinstance(value, (list, tuple)):
            return [bits(v) for v in value]
        return value

    def canonical(value: Any) -> Any:  # one NaN pattern, as JSON and Parquet may hold another
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return bits(value)

    return [f"{key}: {reported.get(key)!r} != {reference.get(key)!r}" for key in SAME_BITS
            if canonical(reported.get(key)) != canonical(reference.get(key))]


# --- ASHA's rule, replayed on its rung file --------------------------------------------------------

def asha_decisions(rungs: dict[str, Any], reduction: float) -> list[tuple[float, str, float, bool]]:
    """(milestone, trial id, score, stopped) for every entry of a PersistentASHA rung file, each
    judged as Ray's ASHA judges it: against the ``1 - 1/reduction`` quantile of the scores recorded
    at that rung before it (a rung's entries are in the order they arrived). The first entry of a
    rung always goes on."""
    import numpy as np

    decisions = []
    for bracket in rungs["brackets"]:
        for milestone, recorded in bracket:
            before: list[float] = []
            for trial_id, score in recorded.items():
                cutoff = np.nanpercentile(before, (1 - 1 / reduction) * 100) if before else None
                decisions.append((float(milestone), trial_id, score, bool(cutoff is not None and score < cutoff)))
                before.append(score)
    return decisions
