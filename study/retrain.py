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

from study.ranking import ranked_study
from study.records import config_columns, stored_config
from study.spec import StudySpec, read_study_json
from study.store import ResultStore
from trainer.config import ConfigError, TrainConfig
from trainer.presets import SUPERVISED_ONLY

PAPER, SUPERVISED = "paper point", "supervised only"
FIRST_SEED = 1000  # retrain seeds start here: far from the seeds a search config carries


@dataclass(frozen=True)
class Candidate:
    label: str            # "#1 <trial id>", "paper point" or "supervised only"
    source: str           # the trial id, or "paper" / "supervised"
    rank: int | None
    config: TrainConfig


def candidates(folder: Path, top: int, iterations: int | None = None,
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


def train_and_test(config: dict[str, Any]) -> dict[str, Any]:
    """One retrain run (in a Ray worker): train at the full budget, score on test and val."""
    import ray

    from trainer.fit import fit

    result = fit(TrainConfig.from_dict(config), final_test=True)
    return {"test_miou": result.test_miou, "test_iou": result.test_iou, "val_miou": result.val_miou,
            "train_seconds": result.train_seconds, "node": ray.util.get_node_ip_address()}


def retrain(folder: Path, top: int = 3, seeds: int = 3, iterations: int | None = None,
            progress: bool = True, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every (candidate, seed) not stored yet on Ray; return all stored rows of this plan."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least one seed (paired gains need 2 or more)")
    folder = Path(folder)
    spec = read_study_json(folder)
    chosen = candidates(folder, top, iterations, spec)
    store = ResultStore(folder, spec.name)
    done = {(r["candidate"], r["seed"], r["iterations"]) for r in store.retrain().to_pylist()}
    jobs = [(c, FIRST_SEED + i) for c in chosen for i in range(seeds)
            if (c.label, FIRST_SEED + i, c.config.iterations) not in done]
    if jobs:
        say(f"retraining {len(chosen)} configs x {seeds} seeds: {len(jobs)} runs to do "
            f"({len(chosen) * seeds - len(jobs)} stored already)")
        _run_on_ray(spec, store, jobs, progress)
    wanted = {(c.label, FIRST_SEED + i, c.config.iterations) for c in chosen for i in range(seeds)}
    return [r for r in store.retrain().to_pylist() if (r["candidate"], r["seed"], r["iterations"]) in wanted]


def _run_on_ray(spec: StudySpec, store: ResultStore, jobs: list[tuple[Candidate, int]], progress: bool) -> None:
    import ray
    from tqdm import tqdm

    from study.run import _ensure_pretrained, check_fits, connect

    owns_ray = connect(spec.address)
    try:
        check_fits(spec)
        _ensure_pretrained(jobs[0][0].config)
        task = ray.remote(train_and_test).options(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                                                  max_retries=1)
        pending = {task.remote(c.config.replace(seed=seed).to_dict()): (c, seed) for c, seed in jobs}
        with tqdm(total=len(pending), desc="retrain", unit="run", disable=not progress, dynamic_ncols=True) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                candidate, seed = pending.pop(ready[0])
                result = ray.get(ready[0])
                cfg = candidate.config.replace(seed=seed)
                store.append_retrain([{
                    "candidate": candidate.label, "source": candidate.source, "rank": candidate.rank, "seed": seed,
                    "iterations": cfg.iterations, "timestamp": dt.datetime.now(dt.timezone.utc), **result,
                    **config_columns(cfg.to_dict())}])
                bar.update()
    finally:
        if owns_ray:
            ray.shutdown()


# --- the table ---------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _paired(rows: dict[int, float], reference: dict[int, float]) -> tuple[float, float, int, int] | None:
    seeds = sorted(set(rows) & set(reference))
    if not seeds:
        return None
    gains = [rows[s] - reference[s] for s in seeds]
    mean, std = _mean_std(gains)
    return mean, std, sum(g > 0 for g in gains), len(gains)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: test mIoU mean and std over seeds, and paired gains over the two references."""
    by_candidate: dict[str, dict[int, float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["candidate"])):
        by_candidate.setdefault(row["candidate"], {})[row["seed"]] = row["test_miou"]
        meta.setdefault(row["candidate"], row)
    table = []
    for label, scores in by_candidate.items():
        mean, std = _mean_std(list(scores.values()))
        table.append({"candidate": label, "source": meta[label]["source"], "seeds": len(scores),
                      "test_miou": mean, "test_std": std,
                      "gain_paper": _paired(scores, by_candidate.get(PAPER, {})) if label != PAPER else None,
                      "gain_supervised": (_paired(scores, by_candidate.get(SUPERVISED, {}))
                                          if label != SUPERVISED else None)})
    return table


def mean_std_text(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")


def gain_text(gain: tuple[float, float, int, int] | None) -> str:
    if gain is None:
        return "-"
    mean, std, wins, count = gain
    return f"{100 * mean:+.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}") + f" ({wins}/{count} seeds)"


def table_text(rows: list[dict[str, Any]]) -> str:
    """The retrain table as Markdown: README and the terminal show the same thing."""
    lines = ["| config | test mIoU | gain over paper point | gain over supervised only |", "|---|---|---|---|"]
    for entry in summarise(rows):
        lines.append(f"| {entry['candidate']} | {mean_std_text(entry['test_miou'], entry['test_std'])} "
                     f"| {gain_text(entry['gain_paper'])} | {gain_text(entry['gain_supervised'])} |")
    return "\n".join(lines)
