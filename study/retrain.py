"""Retrain the winners honestly: top configs, the paper point and supervised-only, on fresh seeds.

The search selected its configs on the val split, so their val scores are biased
upwards. Here each candidate trains again at the full budget on seeds the search never
used and is scored on the test split. Every candidate runs on the same seeds, so the
gains are paired: per seed, candidate minus reference, then mean and std over seeds.

Runs go to Ray as tasks (each with the study's CPUs and GPUs per trial) and land in
``retrain/`` as Parquet as each one finishes; running the command again skips the
(candidate, seed, iterations) runs already stored, so an interrupted retrain resumes.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from study.location import Location, as_location
from study.ranking import ranked_study
from study.records import config_columns, stored_config
from study.runs import fresh_seeds, run_on_ray
from study.spec import StudySpec, read_study_json
from study.store import ResultStore
from trainer.config import ConfigError, TrainConfig
from trainer.presets import SUPERVISED_ONLY

PAPER, SUPERVISED = "paper point", "supervised only"
RETRAIN_MEASURED = ("test_miou", "test_iou", "val_miou", "train_seconds", "precision", "channels_last", "node",
                    "test_confusion", "val_preview")  # of a run's result


@dataclass(frozen=True)
class Candidate:
    label: str            # "#1 <trial id>", "paper point" or "supervised only"
    source: str           # the trial id, or "paper" / "supervised"
    rank: int | None
    config: TrainConfig


def candidates(folder: "Location | Path", top: int, iterations: int | None = None,
               spec: StudySpec | None = None) -> list[Candidate]:
    """The top ``top`` trials of the study, then its paper point and supervised-only point."""
    if top < 1:
        raise ConfigError(f"--top {top}: retrain at least one config (--top 1 or more)")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations {iterations}: give a positive number of iterations")
    ranked = ranked_study(folder)
    spec = spec or read_study_json(folder)
    paper = spec.paper_config()
    chosen = [Candidate(f"#{rank} {row['trial_id']}", row["trial_id"], rank, stored_config(row))
              for rank, row in enumerate(ranked[:top], start=1)]
    chosen += [Candidate(PAPER, "paper", None, paper),
               Candidate(SUPERVISED, "supervised", None, paper.replace(**SUPERVISED_ONLY))]
    if iterations is not None:
        chosen = [Candidate(c.label, c.source, c.rank, c.config.replace(iterations=iterations)) for c in chosen]
    return chosen


def retrain(folder: "Location | Path", top: int = 3, seeds: int = 3, iterations: int | None = None,
            address: str | None = None, progress: bool = True,
            say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every (candidate, seed) not stored yet on Ray (``address``'s, else the study's, else a
    local one); return all stored rows of this plan."""
    seed_list = fresh_seeds(seeds)
    folder = as_location(folder)
    spec = read_study_json(folder)
    chosen = candidates(folder, top, iterations, spec)
    store = ResultStore(folder, spec.name)
    done = {(r["candidate"], r["seed"], r["iterations"]) for r in store.retrain().to_pylist()}
    jobs = [(c, c.config.replace(seed=seed)) for c in chosen for seed in seed_list
            if (c.label, seed, c.config.iterations) not in done]
    if jobs:
        say(f"retraining {len(chosen)} configs x {seeds} seeds: {len(jobs)} runs to do "
            f"({len(chosen) * seeds - len(jobs)} stored already)")

    def stored(candidate: Candidate, cfg: TrainConfig, result: dict[str, Any]) -> None:
        if result["diverged"]:  # a candidate that cannot be trained on a seed has no paired score: say so
            raise RuntimeError(f"{candidate.label} diverged on seed {cfg.seed}: {result['diverged']}")
        store.append_retrain([{
            "candidate": candidate.label, "source": candidate.source, "rank": candidate.rank, "seed": cfg.seed,
            "iterations": cfg.iterations, "timestamp": dt.datetime.now(dt.timezone.utc),
            **{key: result[key] for key in RETRAIN_MEASURED}, **config_columns(cfg.to_dict())}])

    run_on_ray(spec, jobs, stored, progress, desc="retrain", location=folder, address=address)
    wanted = {(c.label, seed, c.config.iterations) for c in chosen for seed in seed_list}
    return [r for r in store.retrain().to_pylist() if (r["candidate"], r["seed"], r["iterations"]) in wanted]


# --- the table ---------------------------------------------------------------------------------

SAME_COST = 0.05  # a difference in seconds per iteration below 5% is within the timing noise of a shared machine


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def paired(rows: dict[int, float], reference: dict[int, float]) -> tuple[float, float, int, int] | None:
    """Per seed both have, rows minus reference: (mean, std, seeds won, seeds); None without a shared seed."""
    seeds = sorted(set(rows) & set(reference))
    if not seeds:
        return None
    gains = [rows[s] - reference[s] for s in seeds]
    mean, std = mean_std(gains)
    return mean, std, sum(g > 0 for g in gains), len(gains)


def extra_compute(cost: float, reference: float) -> float:
    """How much more a run costs than the reference, as a fraction (0.5: 50% more seconds per iteration)."""
    return cost / reference - 1.0


def gain_per_compute(gain: float, extra: float) -> float | None:
    """Gain (test mIoU, 0 to 1) per 100% more compute; None where the cost is the same within the noise
    or lower (a gain then costs nothing, and a ratio would mislead)."""
    return gain / extra if extra > SAME_COST else None  # NaN extra (no cost known) is not > either


def compute_text(extra: float, per_compute: float | None) -> tuple[str, str]:
    """The 'extra compute' and 'gain per +100% compute' cells of a table."""
    share = f"{100 * extra:+.0f}%"
    if per_compute is None:
        return share, "no extra cost" if extra <= SAME_COST else "-"
    return share, f"{100 * per_compute:+.1f}"


def _seconds_per_iteration(row: dict[str, Any]) -> float:
    seconds = row.get("train_seconds")
    return seconds / row["iterations"] if seconds is not None and row["iterations"] else math.nan


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: test mIoU mean and std over seeds, paired gains over the two references, and its
    cost (mean seconds per training iteration) against the paper point's."""
    by_candidate: dict[str, dict[int, float]] = {}
    cost: dict[str, list[float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["candidate"])):
        by_candidate.setdefault(row["candidate"], {})[row["seed"]] = row["test_miou"]
        cost.setdefault(row["candidate"], []).append(_seconds_per_iteration(row))
        meta.setdefault(row["candidate"], row)
    seconds = {label: statistics.fmean(values) for label, values in cost.items()}
    table = []
    for label, scores in by_candidate.items():
        mean, std = mean_std(list(scores.values()))
        gain = paired(scores, by_candidate.get(PAPER, {})) if label != PAPER else None
        extra = extra_compute(seconds[label], seconds[PAPER]) if PAPER in seconds and label != PAPER else math.nan
        table.append({"candidate": label, "source": meta[label]["source"], "seeds": len(scores),
                      "test_miou": mean, "test_std": std, "gain_paper": gain,
                      "gain_supervised": (paired(scores, by_candidate.get(SUPERVISED, {}))
                                          if label != SUPERVISED else None),
                      "seconds_per_iteration": seconds[label], "extra": extra,
                      "gain_per_compute": gain_per_compute(gain[0], extra) if gain else None})
    return table


def mean_std_text(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")


def gain_text(gain: tuple[float, float, int, int] | None) -> str:
    if gain is None:
        return "-"
    mean, std, wins, count = gain
    return f"{100 * mean:+.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}") + f" ({wins}/{count} seeds)"


def table_text(rows: list[dict[str, Any]]) -> str:
    """The retrain table as Markdown: docs/benchmarks.md and the terminal show the same thing."""
    lines = ["| config | test mIoU | gain over paper point | gain over supervised only | s/it | extra compute "
             "| gain per +100% compute |", "|---|---|---|---|---|---|---|"]
    for entry in summarise(rows):
        share, per = ("-", "-") if math.isnan(entry["extra"]) else compute_text(entry["extra"],
                                                                               entry["gain_per_compute"])
        lines.append(f"| {entry['candidate']} | {mean_std_text(entry['test_miou'], entry['test_std'])} "
                     f"| {gain_text(entry['gain_paper'])} | {gain_text(entry['gain_supervised'])} "
                     f"| {entry['seconds_per_iteration']:.3f} | {share} | {per} |")
    return "\n".join(lines)
