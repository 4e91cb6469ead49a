"""Read a study's Parquet parts exactly as the driver wrote them.

``ResultStore`` readers keep the first row of each key, and ``semiseg-study run`` compacts the
reports at its end: both hide a row written twice. Exactly-once checks read through this module
instead, on a study run with ``--keep-parts`` (no compaction), so a duplicate shows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from study.location import Location, as_location

TABLES = {"reports": "results/reports", "trials": "results/trials", "retrain": "retrain", "ablate": "ablate"}


def raw_rows(study: "str | Path | Location", table: str = "reports") -> list[dict[str, Any]]:
    """Every row of every part file of ``table`` in the study folder, duplicates included."""
    folder = as_location(study) / TABLES[table]
    if not folder.exists():
        return []
    rows: list[dict[str, Any]] = []
    for name, is_file in sorted(folder.list()):
        if is_file and not name.startswith((".", "_")):  # what pyarrow's dataset reader sees
            part = folder / name
            rows.extend(pq.read_table(part.fs_path, filesystem=part.fs).to_pylist())
    return rows


def repeated(rows: list[dict[str, Any]], *key: str) -> dict[tuple, int]:
    """The keys that occur more than once in ``rows``, with their counts (empty: each key once)."""
    counts = Counter(tuple(row[k] for k in key) for row in rows)
    return {k: n for k, n in counts.items() if n > 1}
