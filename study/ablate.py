"""What each part of the winner is worth, and what it costs: leave one group out, add one group in.

A study's winner differs from its paper point in several params at once, so its gain on
test says nothing of which part earns it. The space groups its params as the method is
built (memory bank and contrastive loss, pseudo-labels and teacher, ...; see
``SearchSpace.groups``), and two plans take the groups one at a time:

* leave one out: the winner with that group's params set back to the paper point's; the
  group's contribution is winner minus that run (what the winner loses without it);
* add one in: the paper point with that group's params taken from the winner; the
  contribution is that run minus the paper point (what the group does on its own).

With interactions the two disagree, and that disagreement is itself the finding. Every
variant runs on the same fresh seeds as the winner and the paper point (``study/runs.py``,
as ``retrain``), so each contribution is paired by seed. Runs are Ray tasks, scored on test,
and each lands in ``ablate/`` as it finishes (``records.ABLATE``); a second call trains only
the runs not stored yet. A variant whose config equals another's (with two groups, the
winner without one is the paper point with the other; a group the winner left at the paper's
values changes nothing) shares that run instead of training it again.

Cost is seconds per training iteration and images per second of the runs with and without
the group; "gain per compute" is the gain over the paper point per 100% more seconds per
iteration than the paper point's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from study.ranking import pick, ranked_study
from study.records import config_columns, stored_config
from study.retrain import compute_text, extra_compute, gain_per_compute, gain_text, mean_std, mean_std_text, paired
from study.location import as_location
from study.runs import fresh_seeds, run_on_ray
from study.spec import StudySpec, read_study_json
from study.store import ResultStore
from trainer.config import ConfigError, TrainConfig

WINNER, PAPER = "winner", "paper point"
REFERENCE, LEAVE_OUT, ADD_IN = "reference", "leave out", "add in"
MEASURED = ("test_miou", "val_miou", "test_iou", "train_seconds", "seconds_per_iteration", "images_per_second",
            "devices", "device_type", "precision", "channels_last", "node", "diverged", "test_confusion", "val_preview")  # what a run's result brings


@dataclass(frozen=True)
class Variant:
    label: str
    plan: str                     # REFERENCE, LEAVE_OUT or ADD_IN
    group: str | None
    params: tuple[str, ...]       # the group's params (empty for the references)
    position: int
    config: TrainConfig           # its seed is replaced by each run's


@dataclass(frozen=True)
class Plan:
    winner: str                   # the trial id the plan starts from
    rank: int
    groups: dict[str, tuple[str, ...]]
    variants: list[Variant]


def ablation_groups(declared: dict[str, tuple[str, ...]], differing: list[str]) -> dict[str, tuple[str, ...]]:
    """The space's groups, then each param that differs between winner and paper point but is in no
    group as a group of its own: together they account for the whole difference."""
    grouped = {key for members in declared.values() for key in members}
    return {**declared, **{key: (key,) for key in differing if key not in grouped}}


def make_plan(folder: Path, spec: StudySpec, rank: int = 1, iterations: int | None = None) -> Plan:
    """The variants of the ablation of the study's trial of rank ``rank`` (1: the winner)."""
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations {iterations}: give a positive number of iterations")
    row = pick(ranked_study(folder, what_for=": nothing to ablate yet"), rank)
    winner, paper = stored_config(row), spec.paper_config()
    if iterations is not None:
        winner, paper = winner.replace(iterations=iterations), paper.replace(iterations=iterations)
    # The seed differs by construction (each run gets its own); everything else that differs is the plan.
    differing = [f.name for f in dataclasses.fields(TrainConfig)
                 if f.name != "seed" and getattr(winner, f.name) != getattr(paper, f.name)]
    if not differing:
        raise ConfigError(f"trial {row['trial_id']} (rank {rank}) ran the paper point's config: nothing to ablate; "
                          f"ablate another trial with --rank {rank + 1}")
    groups = ablation_groups(dict(spec.search_space.groups), differing)
    variants = [Variant(WINNER, REFERENCE, None, (), 0, winner), Variant(PAPER, REFERENCE, None, (), 1, paper)]
    for i, (group, params) in enumerate(groups.items()):
        variants.append(Variant(f"{WINNER} without {group}", LEAVE_OUT, group, params, 2 + 2 * i,
                                winner.replace(**{k: getattr(paper, k) for k in params})))
        variants.append(Variant(f"{PAPER} with {group}", ADD_IN, group, params, 3 + 2 * i,
                                paper.replace(**{k: getattr(winner, k) for k in params})))
    return Plan(row["trial_id"], rank, groups, variants)


def run_id(cfg: TrainConfig) -> str:
    """Which run a config with its seed is: equal configs train the same run (bit-exact on CPU)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def ablate(folder: Path, seeds: int = 3, iterations: int | None = None, rank: int = 1, address: str | None = None,
           progress: bool = True, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every run of the plan not stored yet on Ray; return the plan's rows, one per (variant, seed)."""
    seed_list = fresh_seeds(seeds)
    folder = as_location(folder)
    spec = read_study_json(folder)
    plan = make_plan(folder, spec, rank, iterations)
    store = ResultStore(folder, spec.name)
    wanted = [(variant, variant.config.replace(seed=seed)) for variant in plan.variants for seed in seed_list]
    ids = [run_id(cfg) for _, cfg in wanted]
    stored = store.ablate().to_pylist()
    done = {(r["run_id"], r["variant"]) for r in stored}
    trained = {r["run_id"]: r for r in stored if not r["shared_run"]}
    jobs: dict[str, tuple[str, TrainConfig]] = {}
    for (variant, cfg), rid in zip(wanted, ids):
        if rid not in trained and rid not in jobs:
            jobs[rid] = (rid, cfg)
    say(f"ablating trial {plan.winner} (rank {rank}) over {len(plan.groups)} groups: {len(plan.variants)} variants "
        f"x {seeds} seeds, {len(set(ids))} distinct runs of {plan.variants[0].config.iterations} iterations: "
        f"{len(jobs)} to train ({len(set(ids) & set(trained))} stored already)")

    def rows_of(rid: str, result: dict[str, Any], first_shared: bool) -> list[dict[str, Any]]:
        """The rows of every variant that is this run and has none yet; the first owns the run."""
        rows = []
        for (variant, cfg), other in zip(wanted, ids):
            if other != rid or (rid, variant.label) in done:
                continue
            rows.append({"run_id": rid, "variant": variant.label, "plan": variant.plan, "group": variant.group,
                         "group_params": json.dumps(list(variant.params)) if variant.group else None,
                         "position": variant.position, "winner": plan.winner, "seed": cfg.seed,
                         "iterations": cfg.iterations, **{k: result.get(k) for k in MEASURED},
                         "shared_run": first_shared or bool(rows), "timestamp": dt.datetime.now(dt.timezone.utc),
                         **config_columns(cfg.to_dict())})
            done.add((rid, variant.label))
        return rows

    # Variants that are a stored run under another label (an earlier plan, another variant) need no training.
    store.append_ablate([row for rid in dict.fromkeys(ids) if rid in trained
                         for row in rows_of(rid, trained[rid], first_shared=True)])

    def finished(rid: str, cfg: TrainConfig, result: dict[str, Any]) -> None:
        store.append_ablate(rows_of(rid, result, first_shared=False))

    run_on_ray(spec, list(jobs.values()), finished, progress, desc="ablate", location=as_location(folder),
               address=address)
    keys = {(rid, variant.label) for (variant, _), rid in zip(wanted, ids)}
    return [r for r in store.ablate().to_pylist() if (r["run_id"], r["variant"]) in keys]


# --- the tables ---------------------------------------------------------------------------------

def latest_plan(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the most recent plan in a table that may hold older ones (another winner, budget)."""
    if not rows:
        return []
    last = max(rows, key=lambda r: r["timestamp"])
    rows = [r for r in rows if (r["winner"], r["iterations"]) == (last["winner"], last["iterations"])]
    newest: dict[tuple[str, int], dict[str, Any]] = {}  # a variant redefined since: its newest runs
    for row in sorted(rows, key=lambda r: r["timestamp"]):
        newest[(row["variant"], row["seed"])] = row
    return list(newest.values())


@dataclass(frozen=True)
class Measured:
    """One variant over its seeds; a seed on which it diverged has no score to pair."""

    label: str
    test: dict[int, float]          # seed -> test mIoU, the seeds it trained to the end
    seconds_per_iteration: float    # means over the seeds with a cost (NaN: none)
    images_per_second: float
    runs: set[str]                  # run ids, to tell a variant that is another's run
    diverged: list[int]             # seeds on which it diverged


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else math.nan


def _measured(rows: list[dict[str, Any]]) -> dict[str, Measured]:
    by: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["position"], r["seed"])):
        by.setdefault(row["variant"], []).append(row)
    return {label: Measured(label, {r["seed"]: r["test_miou"] for r in runs if not r["diverged"]},
                            _mean([r["seconds_per_iteration"] for r in runs]),
                            _mean([r["images_per_second"] for r in runs]), {r["run_id"] for r in runs},
                            [r["seed"] for r in runs if r["diverged"]])
            for label, runs in by.items()}


def _scores(measured: Measured) -> tuple[float, float]:
    """Mean and std of test mIoU over the seeds it trained to the end (NaN if it diverged on all)."""
    return mean_std(list(measured.test.values())) if measured.test else (math.nan, math.nan)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest plan as numbers: per group both contributions and costs, per variant its gain over the
    paper point and its cost against it."""
    rows = latest_plan(rows)
    measured = _measured(rows)
    winner, paper = measured.get(WINNER), measured.get(PAPER)
    groups: list[dict[str, Any]] = []
    for row in sorted((r for r in rows if r["plan"] == LEAVE_OUT), key=lambda r: r["position"]):
        if any(g["group"] == row["group"] for g in groups):
            continue
        without = measured[row["variant"]]
        alone = measured.get(f"{PAPER} with {row['group']}")
        groups.append({
            "group": row["group"], "params": json.loads(row["group_params"]),
            # The winner at the paper's values of the group: leaving it out changes nothing, by construction.
            "unchanged": winner is not None and without.runs == winner.runs,
            "leave_out": paired(winner.test, without.test) if winner else None,
            "leave_out_cost": (winner, without) if winner else None,
            "add_in": paired(alone.test, paper.test) if alone and paper else None,
            "add_in_cost": (alone, paper) if alone and paper else None})
    against = []
    for label, m in measured.items():
        if paper is None or label == PAPER:
            continue
        gain = paired(m.test, paper.test)
        extra = extra_compute(m.seconds_per_iteration, paper.seconds_per_iteration)
        against.append({"variant": label, "measured": m, "test": _scores(m), "gain": gain,
                        "seconds_per_iteration": m.seconds_per_iteration, "images_per_second": m.images_per_second,
                        "extra": extra, "gain_per_compute": gain_per_compute(gain[0], extra) if gain else None})
    return {"winner": rows[0]["winner"] if rows else None, "iterations": rows[0]["iterations"] if rows else None,
            "seeds": sorted({r["seed"] for r in rows}), "groups": groups, "against_paper": against,
            "paper": paper}


def cost_text(pair: tuple[Measured, Measured] | None) -> str:
    """'with -> without' seconds per iteration and images per second."""
    if pair is None:
        return "-"
    with_, without = pair
    return (f"{with_.seconds_per_iteration:.3f} vs {without.seconds_per_iteration:.3f} s/it, "
            f"{with_.images_per_second:.0f} vs {without.images_per_second:.0f} img/s")


def diverged_text(measured: tuple[Measured, ...] | None) -> str:
    """A note of the seeds on which a run of the pair diverged (they are left out of the pairing)."""
    notes = [f"{m.label} diverged on seed {', '.join(map(str, m.diverged))}" for m in measured or () if m.diverged]
    return f" ({'; '.join(notes)})" if notes else ""


def table_text(rows: list[dict[str, Any]]) -> str:
    """Both tables as Markdown (docs/benchmarks.md and the terminal show the same thing)."""
    summary = summarise(rows)
    lines = [f"ablation of trial {summary['winner']} at {summary['iterations']} iterations, seeds "
             f"{', '.join(map(str, summary['seeds']))} (test mIoU points, paired by seed)", "",
             "| group | params | left out of the winner: winner minus without | cost with vs without "
             "| added to the paper point: with minus paper | cost with vs without |", "|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        note = " (the winner has the paper's values)" if g["unchanged"] else ""
        lines.append(f"| {g['group']} | {', '.join(g['params'])} | {gain_text(g['leave_out'])}{note}"
                     f"{diverged_text(g['leave_out_cost'])} | {cost_text(g['leave_out_cost'])} "
                     f"| {gain_text(g['add_in'])}{diverged_text(g['add_in_cost'])} | {cost_text(g['add_in_cost'])} |")
    lines += ["", "| variant | test mIoU | gain over paper point | s/it | img/s | extra compute "
                  "| gain per +100% compute |", "|---|---|---|---|---|---|---|"]
    paper = summary["paper"]
    if paper is not None:
        mean, std = _scores(paper)
        lines.append(f"| {PAPER} | {mean_std_text(mean, std)}{diverged_text((paper,))} | - "
                     f"| {paper.seconds_per_iteration:.3f} | {paper.images_per_second:.0f} | - | - |")
    for v in summary["against_paper"]:
        share, per = compute_text(v["extra"], v["gain_per_compute"])
        lines.append(f"| {v['variant']} | {mean_std_text(*v['test'])}{diverged_text((v['measured'],))} "
                     f"| {gain_text(v['gain'])} "
                     f"| {v['seconds_per_iteration']:.3f} | {v['images_per_second']:.0f} | {share} | {per} |")
    return "\n".join(lines)
