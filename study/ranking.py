"""Which trials of a study are best, and the config each one ran, read from its Parquet.

One ranking serves the run summary, the report's top-trials table, ``retrain --top K``
and ``export --rank N``, so "rank 1" means the same trial everywhere:

1. trials that trained the full budget (``finished``), by best val mIoU;
2. then trials that ended before the full budget: stopped early (by ASHA or the time budget)
   or interrupted (by Ctrl-C; ``run --resume`` continues them), by best val mIoU.

A stopped trial's score comes from a shorter run, so it never outranks one that
finished, even if its early number happens to be higher. Errored trials, running ones and
trials without an evaluation are not ranked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from study.location import Location, as_location
from study.records import FINISHED, INTERRUPTED, STOPPED, stored_config
from study.store import ResultStore
from trainer.config import ConfigError, TrainConfig


class NoFinishedTrialError(ConfigError):
    """The study has no trial with an evaluation to rank (nothing to report, retrain or export)."""


def has_score(row: dict[str, Any]) -> bool:
    value = row.get("best_val_miou")
    return value is not None and not math.isnan(value)


def ranked_trials(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials rows, best first (see the module docstring); ties keep trial-id order."""
    ranked = [row for row in rows if row.get("status") in (FINISHED, STOPPED, INTERRUPTED) and has_score(row)]
    ranked.sort(key=lambda row: (row["status"] != FINISHED, -row["best_val_miou"], row["trial_id"]))
    return ranked


def ranked_study(folder: "Location | Path", name: str | None = None, rows: list[dict[str, Any]] | None = None,
                 what_for: str = "") -> list[dict[str, Any]]:
    """The ranked trials of the study in ``folder`` (or of its trials ``rows``, read already);
    raise NoFinishedTrialError if there are none."""
    folder = as_location(folder)
    name = name or folder.name
    rows = ResultStore(folder, name).trials().to_pylist() if rows is None else rows
    ranked = ranked_trials(rows)
    if not ranked:
        what = f"{len(rows)} trials, none with an evaluation" if rows else "no trials"
        raise NoFinishedTrialError(f"study {name!r} in {folder.parent} has {what}{what_for}; run or resume it "
                                   f"(`semiseg-study run --resume {name}`) until a trial reports")
    return ranked


def pick(ranked: list[dict[str, Any]], rank: int) -> dict[str, Any]:
    """The trial of rank ``rank`` (1 = best), or a clear error naming how many are ranked."""
    if not 1 <= rank <= len(ranked):
        raise ConfigError(f"--rank {rank}: the study ranks {len(ranked)} trials (finished or stopped with an "
                          f"evaluation); choose 1 to {len(ranked)}")
    return ranked[rank - 1]


def export_config(folder: "Location | Path", rank: int, out: Path) -> tuple[dict[str, Any], TrainConfig]:
    """Write the config of the trial of rank ``rank`` as a TrainConfig file (JSON or YAML, by the name's suffix);
    return (trial row, config).

    The file holds every field, the trial's seed and thread count included, so that
    ``semiseg-study train --config FILE`` repeats the trial's run on CPU exactly.
    """
    row = pick(ranked_study(folder), rank)
    cfg = stored_config(row)
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise ConfigError(f"-o {out}: the folder {out.parent} does not exist")
    cfg.save(out)
    return row, cfg
