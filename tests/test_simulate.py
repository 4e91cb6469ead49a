"""The search simulator (issue 13) on hand-made curve tables whose answers are known."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler

from search_spaces import SearchSpace
from study import ray_internals
from study.search import PersistentASHA
from study.rung_ranks import spearman
from study.search import make_sampler, make_searcher
from study.simulate import (CUT, FINISHED, METHODS, STOPPED, CurveTable, TopKAfterRung, curve_seconds, distance,
                            measured_startup, run_method, simulate, validate)

ROOT = Path(__file__).resolve().parents[1]

LOSS = CategoricalDistribution(["a", "b", "c", "d", "e"])
LR = FloatDistribution(0.001, 0.1, log=True)
BANK = IntDistribution(32, 2048, log=True)
TEMPERATURE = FloatDistribution(0.03, 1.0, log=True)
KIND = CategoricalDistribution(["paper", "infonce"])


def _write(path: Path, curves: list[dict]) -> Path:
    """A table in benchmarks/curves.py's layout: one row per (study, trial, evaluation)."""
    rows = []
    for c in curves:
        params = c["params"]
        distributions = {name: json.loads(distribution_to_json(c["dists"][name])) for name in params}
        seconds = c.get("seconds", [10.0 * (i + 1) for i in range(len(c["val"]))])
        train = c.get("train", seconds)  # by default no start-up or evaluation time: seconds as written
        for i, (val, test) in enumerate(zip(c["val"], c.get("test", [v - 0.01 for v in c["val"]]))):
            rows.append({"study": "s", "trial_id": c["id"], "config_id": c.get("config", c["id"]),
                         "seed": c.get("seed", 0), "status": "finished" if c.get("full", True) else "stopped",
                         "full_budget": c.get("full", True), "iteration": 100 * (i + 1), "val_miou": val,
                         "test_miou": test, "train_seconds": train[i], "time_total_s": seconds[i],
                         "params": json.dumps(params), "distributions": json.dumps(distributions)})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _loss_space(choices: list[str] = LOSS.choices) -> SearchSpace:
    return SearchSpace(name="tiny", description="one categorical",
                       suggest=lambda trial: {"loss": trial.suggest_categorical("loss", list(choices))})


def _loss_table(tmp_path: Path, vals: dict[str, list[float]], tests: dict[str, list[float]] | None = None
                ) -> CurveTable:
    curves = [{"id": f"t-{name}", "params": {"loss": name}, "dists": {"loss": LOSS}, "val": val,
               **({"test": tests[name]} if tests else {})} for name, val in vals.items()]
    return CurveTable.load(_write(tmp_path / "curves.parquet", curves))


def _searcher(points: list[str] = (), seed: int = 0, choices: list[str] = LOSS.choices):
    return make_searcher(_loss_space(choices), make_sampler("random", seed), points=[{"loss": p} for p in points])


def _optuna_trials(searcher) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.params["loss"]: t for t in ray_internals.optuna_study(searcher).get_trials()}


# --- the table and its nearest curve ------------------------------------------------------

def test_curve_seconds_leave_out_the_start_up_but_keep_the_evaluations():
    # Non-training time 2, 3, 4: one second per evaluation, so the first report held 1 s of start-up.
    assert curve_seconds([12.0, 23.0, 34.0], [10.0, 20.0, 30.0]) == ([11.0, 22.0, 33.0], 1.0)
    assert curve_seconds([12.0, 23.0], [None, None]) == ([12.0, 23.0], 0.0)  # no train_seconds: as recorded


def test_the_table_keeps_full_curves_with_seconds_per_evaluation(tmp_path):
    path = _write(tmp_path / "c.parquet", [
        {"id": "t1", "params": {"lr": 0.01}, "dists": {"lr": LR}, "val": [0.2, 0.4], "seconds": [12.0, 23.0],
         "train": [10.0, 20.0]},
        {"id": "t2", "params": {"lr": 0.02}, "dists": {"lr": LR}, "val": [0.1], "full": False},
    ])
    table = CurveTable.load(path)
    (curve,) = table.curves
    assert curve.key == "s/t1" and curve.params == {"lr": 0.01} and curve.budget == 200 == table.budget
    assert [(p.iteration, p.val, p.seconds) for p in curve.points] == [(100, 0.2, 11.0), (200, 0.4, 22.0)]
    assert curve.setup_s == 1.0 and curve.final.test == pytest.approx(0.39)
    assert table.distributions == {"lr": LR}


def _mixed_table(tmp_path: Path) -> CurveTable:
    dists = {"lr": LR, "bank": BANK, "kind": KIND, "temperature": TEMPERATURE}
    base = {"lr": 0.01, "bank": 256, "kind": "paper"}
    curves = [  # the seed twin first: a tie must not go to the first row
        {"id": "t5", "config": "A", "seed": 1, "params": base},
        {"id": "t1", "config": "A", "params": base},
        {"id": "t2", "params": {**base, "lr": 0.001}},
        {"id": "t3", "params": {**base, "kind": "infonce", "temperature": 0.1}},
        {"id": "t4", "params": {**base, "bank": 2048}},
    ]
    return CurveTable.load(_write(tmp_path / "mixed.parquet",
                                  [{**c, "dists": dists, "val": [0.5, 0.6]} for c in curves]))


def test_nearest_finds_a_tabulated_config_and_the_right_neighbour(tmp_path):
    table = _mixed_table(tmp_path)
    key = lambda params: table.nearest(params).key  # noqa: E731
    base = {"lr": 0.01, "bank": 256, "kind": "paper"}
    assert key(base) == "s/t1"  # exact; its twin t5 ties at 0 and loses on the key
    assert key({**base, "lr": 0.0012}) == "s/t2"
    # Log scale: 900 is nearer 2048 than 256 in log(bank) (it is nearer 256 on a linear scale).
    assert key({**base, "bank": 900}) == "s/t4"
    assert key({**base, "bank": 600}) == "s/t1"
    # The conditional temperature: same loss, another temperature beats the other loss.
    assert key({**base, "kind": "infonce", "temperature": 0.9}) == "s/t3"
    assert key({**base, "kind": "infonce", "temperature": 0.1}) == "s/t3"
    # Without the loss, the nearest (t1) is left out: its twin t5 counts as the same config.
    assert table.nearest(base, exclude={"A"}).key in {"s/t2", "s/t4"}
    # Each param spans [0, 1]: a different category is 1, a param on one side only is 1.
    assert distance(base, {**base, "kind": "infonce", "temperature": 0.1}, table.distributions) == pytest.approx(
        math.sqrt(2))
    assert distance(base, {**base, "lr": 0.1}, table.distributions) == pytest.approx(0.5)
    assert distance(base, {**base, "bank": 2048}, table.distributions) == pytest.approx(0.5)


def test_validate_nearest_leaves_each_config_out_and_reports_the_seed_noise(tmp_path):
    finals = [("t1", "x1", 0.001, 0.1), ("t2", "x2", 0.002, 0.2), ("t3", "x3", 0.05, 0.5),
              ("t4", "x4", 0.1, 0.6), ("t5", "x4", 0.1, 0.64)]
    table = CurveTable.load(_write(tmp_path / "v.parquet", [
        {"id": tid, "config": cid, "seed": 1 if tid == "t5" else 0, "params": {"lr": lr}, "dists": {"lr": LR},
         "val": [val / 2, val]} for tid, cid, lr, val in finals]))
    report = validate(table)
    # Predictions: x1 <- x2, x2 <- x1, x3 <- x4 (t4, the lower key), both x4 <- x3 (never their twin).
    predictions, truths = [0.2, 0.1, 0.6, 0.5, 0.5], [0.1, 0.2, 0.5, 0.6, 0.64]
    assert report["curves"] == 5
    assert report["mae"] == pytest.approx((0.1 + 0.1 + 0.1 + 0.1 + 0.14) / 5)
    assert report["spearman"] == pytest.approx(5.5 / math.sqrt(95)) == pytest.approx(spearman(predictions, truths))
    assert report["seed_pairs"] == 1 and report["seed_noise"] == pytest.approx(0.04)
    assert report["mae_of_mean"] == pytest.approx((0.385 + 0.26 + 0.115 + (0.6 - 0.8 / 3) + (0.64 - 0.8 / 3)) / 5)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(predictions, truths) == pytest.approx(scipy_stats.spearmanr(predictions, truths)[0])


def _lr_table(tmp_path: Path, model: str) -> tuple[CurveTable, Callable[[dict], tuple[float, float]]]:
    """30 configs whose final val depends on lr alone (a smooth hump in log lr) and whose seconds grow with
    bank; five more params do nothing. Returns the table and the truth: params -> (final val, final seconds)."""
    rng = np.random.default_rng(0)
    dists = {"lr": LR, "bank": BANK, **{f"idle{i}": FloatDistribution(0.0, 1.0) for i in range(5)}}

    def truth(p: dict) -> tuple[float, float]:
        u = math.log(p["lr"] / 0.001) / math.log(100)
        return 0.7 - 0.6 * (u - 0.6) ** 2, 300 * 0.1 * (1 + p["bank"] / 1024)

    curves = []
    for i in range(30):
        p = {"lr": float(np.exp(rng.uniform(math.log(0.001), math.log(0.1)))),
             "bank": int(np.exp(rng.uniform(math.log(32), math.log(2048)))),
             **{f"idle{k}": float(rng.uniform()) for k in range(5)}}
        final, seconds = truth(p)
        curves.append({"id": f"t{i:02d}", "params": p, "dists": dists, "val": [0.6 * final, 0.9 * final, final],
                       "seconds": [seconds / 3, 2 * seconds / 3, seconds]})
    return CurveTable.load(_write(tmp_path / "lr.parquet", curves), model), truth


def test_the_surrogate_finds_the_param_that_matters_where_the_nearest_curve_does_not(tmp_path):
    table, truth = _lr_table(tmp_path, "surrogate")
    nearest, surrogate = validate(table, "nearest"), validate(table, "surrogate")
    # Five idle params dilute the nearest-curve distance; the GP's length scales ignore them.
    assert surrogate["mae"] < nearest["mae"] / 3 and surrogate["spearman"] > 0.95
    new = {"lr": 0.01, "bank": 700, **{f"idle{k}": 0.5 for k in range(5)}}
    curve = table.curve_for(new)
    final, seconds = truth(new)
    assert curve.final.val == pytest.approx(final, abs=0.02)
    assert [p.iteration for p in curve.points] == [100, 200, 300]
    assert curve.final.seconds == pytest.approx(seconds, rel=0.1)
    assert curve.points[0].seconds == pytest.approx(curve.final.seconds / 3, rel=0.01)  # the table's profile


def test_a_surrogate_curve_is_its_mean_plus_one_seeded_offset(tmp_path):
    table, _ = _lr_table(tmp_path, "surrogate")
    params = {"lr": 0.003, "bank": 100, **{f"idle{k}": 0.2 for k in range(5)}}
    mean = table.curve_for(params)
    first, again = (table.curve_for(params, rng=np.random.RandomState(7)) for _ in range(2))
    assert first == again  # the same seed, the same trial
    offsets = {round(a.val - m.val, 12) for a, m in zip(first.points, mean.points)}
    assert len(offsets) == 1 and offsets != {0.0}  # one draw moves the whole curve, as a seed does
    assert table.with_model("nearest").curve_for(params).key.startswith("s/")  # a tabulated curve


# --- the replay ---------------------------------------------------------------------------

def test_fifo_on_one_worker_runs_every_trial_to_the_end_one_after_another(tmp_path):
    table = _loss_table(tmp_path, {"a": [0.3, 0.5], "b": [0.2, 0.7], "c": [0.4, 0.45]})
    searcher = _searcher(points=["c", "a", "b"], choices=["a", "b", "c"])  # then three random ones
    result = simulate(table, searcher, FIFOScheduler(), 1, startup_s=2.0, seed=0, samples=6)
    assert len(result.trials) == 6
    assert all(t.status == FINISHED and t.iterations == 200 and t.compute_s == 22.0 for t in result.trials)
    assert [t.start_s for t in result.trials] == [22.0 * i for i in range(6)]
    assert result.wall_s == result.compute_s == 6 * 22.0
    assert all(t.curve.params == t.params for t in result.trials)  # every config is a tabulated one
    assert [t.params["loss"] for t in result.trials[:3]] == ["c", "a", "b"]
    # Optuna heard every trial as complete, with its final val.
    frozen = ray_internals.optuna_study(searcher).get_trials()
    finals = {"a": 0.5, "b": 0.7, "c": 0.45}
    assert [(t.state, t.value) for t in frozen] == [(TrialState.COMPLETE, finals[t.params["loss"]]) for t in frozen]
    # The best final val is b's; its test is the table's (written 0.01 below its val).
    first_b = next(t for t in result.trials if t.params["loss"] == "b")
    assert result.selected is first_b and result.selected_test == pytest.approx(0.69)
    # New bests with the iterations spent by then: c's two evaluations, a's last (400 in all), b's last (600).
    assert [(p.val, p.iterations_spent) for p in result.anytime] == [(0.4, 100), (0.45, 200), (0.5, 400), (0.7, 600)]


def test_asha_stops_exactly_the_trials_below_the_rung_cutoff(tmp_path):
    # Final vals below the first rung's: d, stopped at 0.45, beats every finished trial's last val.
    vals = {"a": [0.5, 0.42], "b": [0.3, 0.4], "c": [0.6, 0.44], "d": [0.45, 0.7], "e": [0.55, 0.43]}
    tests = {name: [v[0] - 0.05, v[1] - 0.03] for name, v in vals.items()}
    table = _loss_table(tmp_path, vals, tests)
    searcher = _searcher(points=list("abcde"))
    scheduler = PersistentASHA(tmp_path / "rungs.json", max_t=200, grace_period=100, reduction_factor=2)
    result = simulate(table, searcher, scheduler, 1, startup_s=2.0, seed=0, samples=5)
    # Cutoffs, the median of the rung so far: b 0.3 < 0.5, c 0.6 >= 0.4, d 0.45 < 0.5, e 0.55 >= 0.475.
    ended = {t.params["loss"]: (t.status, t.iterations) for t in result.trials}
    assert ended == {"a": (FINISHED, 200), "b": (STOPPED, 100), "c": (FINISHED, 200), "d": (STOPPED, 100),
                     "e": (FINISHED, 200)}
    assert scheduler.rungs()[0] == (100, {t.trial_id: vals[t.params["loss"]][0] for t in result.trials})
    frozen = _optuna_trials(searcher)
    assert {k: t.state for k, t in frozen.items()} == {"a": TrialState.COMPLETE, "b": TrialState.PRUNED,
                                                        "c": TrialState.COMPLETE, "d": TrialState.PRUNED,
                                                        "e": TrialState.COMPLETE}
    assert frozen["d"].intermediate_values == {100: 0.45} and frozen["e"].value == 0.43
    # A stopped trial costs its start-up and its first 10 s; the others 2 + 20.
    assert result.compute_s == 3 * 22.0 + 2 * 12.0 == sum(t.compute_s for t in result.trials)
    # The pick is the best final val among the finished (c), not d's truncated 0.45.
    assert result.selected.params == {"loss": "c"} and result.selected_val == 0.44
    assert result.selected_test == pytest.approx(0.41)
    # The anytime curve: each improvement, with the compute and wall time it took (one worker: equal).
    # a runs 0-22 (0.5 at 12), b 22-34, c 34-56 (0.6 at 46), d 56-68, e 68-90.
    assert [(p.val, p.compute_s, p.wall_s) for p in result.anytime] == [(0.5, 12.0, 12.0), (0.6, 46.0, 46.0)]
    assert result.incumbent(compute_s=60.0).val == 0.6 and result.incumbent(compute_s=5.0) is None


def test_two_workers_halve_the_wall_time_of_equal_trials(tmp_path):
    table = _loss_table(tmp_path, {"a": [0.3, 0.5], "b": [0.2, 0.7]})
    result = simulate(table, _searcher(choices=["a", "b"]), FIFOScheduler(), 2, startup_s=3.0, seed=0, samples=4)
    assert sorted(t.start_s for t in result.trials) == [0.0, 0.0, 23.0, 23.0]
    assert result.compute_s == 4 * 23.0 == sum(t.compute_s for t in result.trials)
    assert result.wall_s == result.compute_s / 2 == 46.0
    # The first evaluations come at 3 + 10 s of wall time, when both workers have spent that.
    assert (result.anytime[0].wall_s, result.anytime[0].compute_s) == (13.0, 26.0)


def test_a_compute_budget_cuts_the_running_trials_and_selection_falls_back(tmp_path):
    table = _loss_table(tmp_path, {"a": [0.3, 0.5], "b": [0.4, 0.45]}, {"a": [0.1, 0.49], "b": [0.1, 0.44]})
    one = simulate(table, _searcher(points=["a", "b"], choices=["a", "b"]), FIFOScheduler(), 1, startup_s=3.0,
                   seed=0, budget_s=35.0)
    assert [(t.status, t.compute_s, t.iterations) for t in one.trials] == [(FINISHED, 23.0, 200), (CUT, 12.0, 0)]
    assert one.compute_s == one.wall_s == 35.0
    # Two workers spend 35 s by 17.5 s: both trials have their first evaluation, neither its last.
    two = simulate(table, _searcher(points=["a", "b"], choices=["a", "b"]), FIFOScheduler(), 2, startup_s=3.0,
                   seed=0, budget_s=35.0)
    assert [(t.status, t.compute_s, t.iterations) for t in two.trials] == [(CUT, 17.5, 100), (CUT, 17.5, 100)]
    assert two.wall_s == 17.5 and two.compute_s == 35.0
    # No trial reached the full budget: the best last val (b, 0.4), with its curve's final test.
    assert two.selected.params == {"loss": "b"} and two.selected_test == pytest.approx(0.44)


def test_top_k_pauses_at_the_rung_and_resumes_only_the_best(tmp_path):
    vals = {"a": [0.5, 0.55], "b": [0.3, 0.9], "c": [0.6, 0.62], "d": [0.4, 0.8]}
    table = _loss_table(tmp_path, vals)
    searcher = _searcher(points=list("abcd"), choices=list("abcd"))
    result = simulate(table, searcher, TopKAfterRung(rung=100, k=2, population=4), 1, startup_s=2.0, seed=0,
                      samples=4)
    ended = {t.params["loss"]: (t.status, t.iterations, t.starts) for t in result.trials}
    assert ended == {"a": (FINISHED, 200, 2), "b": (STOPPED, 100, 1), "c": (FINISHED, 200, 2),
                     "d": (STOPPED, 100, 1)}
    # Four trials to the rung (2 + 10 s each), then a and c resumed: a start-up again, and 10 s.
    assert result.compute_s == 4 * 12.0 + 2 * 12.0 == sum(t.compute_s for t in result.trials)
    states = {k: t.state for k, t in _optuna_trials(searcher).items()}
    assert states == {"a": TrialState.COMPLETE, "b": TrialState.PRUNED, "c": TrialState.COMPLETE,
                      "d": TrialState.PRUNED}
    assert result.selected.params == {"loss": "c"}


def test_every_registered_method_replays_a_study(tmp_path):
    assert {"random+fifo", "random+asha", "tpe+fifo", "tpe+asha", "tpe+hyperband", "gp+asha",
            "random+topk"} <= set(METHODS)
    vals = {name: [0.1 * (i + 1) + 0.01 * k for k in range(9)] for i, name in enumerate("abcd")}
    table = _loss_table(tmp_path, vals)
    for name in METHODS:
        if name == "dehb" and not _has_dehb():
            continue
        # DEHB's first jobs are 9 at 100 iterations and 3 at 300: its first full trial comes later.
        samples = 20 if name == "dehb" else 10
        result = run_method(name, table, workers=2, startup_s=1.0, seed=0, samples=samples,
                            space=_loss_space(list("abcd")))
        assert len(result.trials) == samples, name
        assert result.compute_s == pytest.approx(sum(t.compute_s for t in result.trials)), name
        full = [t for t in result.trials if t.iterations == 900]
        assert full and result.selected.last_val == max(t.last_val for t in full), name
        assert all(t.status in (FINISHED, STOPPED) for t in result.trials), name
        if name.endswith("fifo"):
            assert len(full) == 10, name


def test_hyperband_style_brackets_have_distinct_rungs(tmp_path):
    scheduler = METHODS["tpe+hyperband"].scheduler(900, 10)
    rungs = [[m for m, _ in ray_internals.bracket_rungs(b)] for b in ray_internals.asha_brackets(scheduler)]
    assert rungs == [[600, 300], [600], []]


def test_dehb_maps_the_unit_cube_onto_the_space_and_back():
    from search_spaces import get_space
    from study.simulate.dehb import from_unit, to_unit

    space = get_space("default")
    dists = space.distributions()
    assert "temperature" in dists and list(dists) == sorted(dists)  # a conditional param is a dimension too
    assert (from_unit(0.0, BANK), from_unit(1.0, BANK), from_unit(0.5, BANK)) == (32, 2048, 256)  # log scale
    assert from_unit(0.5, LR) == pytest.approx(0.01)
    assert from_unit(0.27, FloatDistribution(0.0, 1.0, step=0.1)) == pytest.approx(0.3)  # on the step grid
    assert [from_unit(u, KIND) for u in (0.0, 0.49, 0.5, 1.0)] == ["paper", "paper", "infonce", "infonce"]
    for name, value in space.paper_point.items():  # to_unit and from_unit are inverses
        assert from_unit(to_unit(value, dists[name]), dists[name]) == pytest.approx(value), name


def _has_dehb() -> bool:
    """Installed apart (Makefile: its metadata pins numpy<2); looked up, not imported (Dask is slow to import)."""
    return importlib.util.find_spec("dehb") is not None


@pytest.mark.skipif(not _has_dehb(), reason="dehb is not installed (make install: pip install --no-deps dehb==0.1.2)")
def test_dehb_stops_each_trial_at_its_fidelity_and_hears_of_every_trial(tmp_path):
    from study.simulate.dehb import dehb_pair

    vals = {name: [0.1 * (i + 1) + 0.01 * k for k in range(9)] for i, name in enumerate("abcd")}
    table = _loss_table(tmp_path, vals)
    space = SearchSpace(name="tiny", description="one categorical and its paper point", paper_point={"loss": "b"},
                        suggest=lambda trial: {"loss": trial.suggest_categorical("loss", list("abcd"))})
    searcher, scheduler = dehb_pair(space, table.budget, 0, True)
    result = simulate(table, searcher, scheduler, 2, startup_s=1.0, seed=0, samples=24)
    assert result.trials[0].params == {"loss": "b"}  # the paper point first
    assert {t.trial_id: t.iterations for t in result.trials} == searcher.fidelity
    assert set(searcher.fidelity.values()) == {100, 300, 900}
    assert all((t.status == FINISHED) == (t.iterations == 900) for t in result.trials)
    # DEHB was told every trial: -val at its fidelity (it minimises) and the trial's seconds.
    assert searcher.told == {t.trial_id: {"fitness": -t.last_val, "cost": pytest.approx(t.compute_s)}
                             for t in result.trials}
    assert len(searcher.dehb.history) == 24 and searcher.dehb.inc_score == -max(t.last_val for t in result.trials)
    # The seed makes a repeat: the same seed, the same study; another, another.
    again = [(t.params, t.iterations) for t in run_method("dehb", table, workers=2, startup_s=1.0, seed=0, samples=24,
                                                          space=space).trials]
    assert again == [(t.params, t.iterations) for t in result.trials]
    other = run_method("dehb", table, workers=2, startup_s=1.0, seed=1, samples=24, space=space).trials
    assert [t.params for t in other] != [t.params for t in result.trials]


def test_measured_startup_is_the_median_of_time_before_training(tmp_path):
    from study.store import ResultStore

    store = ResultStore(tmp_path, tmp_path.name)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    at = lambda s: t0 + dt.timedelta(seconds=s)  # noqa: E731
    store.write_trials([{"trial_id": "t1", "status": "finished", "started": at(0)},
                        {"trial_id": "t2", "status": "finished", "started": at(1)},
                        {"trial_id": "t3", "status": "stopped", "started": at(2)}])
    report = lambda tid, it, total, train, ts: {"trial_id": tid, "iteration": it, "time_total_s": total,  # noqa: E731
                                                "train_seconds": train, "timestamp": at(ts), "val_miou": 0.5}
    store.append_reports([report("t1", 100, 12.0, 10.0, 12.5), report("t1", 200, 23.0, 20.0, 23.5),
                          report("t2", 100, 14.0, 10.0, 15.2), report("t2", 200, 25.0, 20.0, 26.2),
                          report("t3", 100, 11.0, 10.0, 13.0)])
    # An evaluation costs 1 s (the median step of time_total_s - train_seconds); per trial the
    # start-up is first receipt - started - training - one evaluation: 1.5, 3.2 and 0.0.
    assert measured_startup(tmp_path) == pytest.approx(1.5)


def test_the_gp_sampler_learns_from_the_replayed_results(tmp_path):
    # Two GP fits (after 3 random trials): GP sampling costs about a second each on a busy CPU.
    table = _loss_table(tmp_path, {n: [0.1 * (i + 1), 0.1 * (i + 1) + 0.05] for i, n in enumerate("abcd")})
    searcher = make_searcher(_loss_space(list("abcd")), optuna.samplers.GPSampler(seed=0, n_startup_trials=3))
    result = simulate(table, searcher, FIFOScheduler(), 1, startup_s=1.0, seed=0, samples=6)
    proposals = [t.params["loss"] for t in result.trials]
    assert proposals[:3] == ["b", "d", "a"]  # its random start-up
    assert proposals[-1] == "d"  # then the best config seen, once it has tried the one it had not
    assert result.selected.params == {"loss": "d"} and result.selected_val == pytest.approx(0.45)


# --- `semiseg-study simulate` on tiny real studies ------------------------------------------------

def _fifo_study(root: Path, name: str, samples: int) -> Path:
    from conftest import REPORT_SPACE, REPORT_TINY
    from study.run import run_study
    from study.spec import StudySpec

    space = root / "tiny.yaml"
    space.write_text(REPORT_SPACE)
    spec = StudySpec(name=name, space=str(space), samples=samples, max_iters=6, grace=3, scheduler="fifo", searcher="random",
                     concurrency=2, fixed=dict(REPORT_TINY), seed=0)
    run_study(spec, root, progress=False, say=lambda _: None)
    return root / name


@pytest.fixture(scope="module")
def six(ray_local, tmp_path_factory) -> Path:
    """A finished tiny random + FIFO study of six trials."""
    return _fifo_study(tmp_path_factory.mktemp("six"), "six", samples=6)


def test_simulate_replays_a_finished_study_through_the_cli(six, capsys):
    from study.cli import main

    capsys.readouterr()
    code = main(["simulate", "six", "--dir", str(six.parent), "--searcher", "tpe", "--scheduler", "asha", "--grace", "3",
                 "--reduction", "2", "--repeats", "2", "--samples", "4", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("6 full curves of six")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("tpe+asha", "random+fifo"))}
    assert set(rows) == {"tpe+asha", "random+fifo"}
    for row in rows.values():
        assert row[1] == "2"                                   # workers
        assert 0 <= int(row[2].rstrip("%")) <= 100             # share of repeats that reached the target
        assert row[-2] == "-"                                  # no test scores in a plain study: none selected
    assert "selected test mIoU: - since the trials of six did not score the test split" in out


def test_simulate_needs_enough_full_curves(ray_local, tmp_path, capsys):
    from study.cli import main
    from study.simulate.efficiency import MIN_CURVES

    _fifo_study(tmp_path, "three", samples=MIN_CURVES - 2)
    capsys.readouterr()
    code = main(["simulate", "three", "--dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"has {MIN_CURVES - 2} trials that ran the full budget" in err
    assert f"at least {MIN_CURVES}" in err


def test_real_studies_are_recorded_with_their_reports_and_spec(six, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("validate_simulator", ROOT / "benchmarks" / "validate_simulator.py")
    validate_simulator = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "validate_simulator", validate_simulator)  # its dataclass looks itself up there
    spec.loader.exec_module(validate_simulator)
    kept = tmp_path / "real.parquet"

    assert validate_simulator.record([str(six)], kept) == ["six"]
    assert validate_simulator.record([str(six)], kept) == ["six"]  # again: replaced, not doubled
    [study] = validate_simulator.recorded(kept)
    fresh = validate_simulator.from_folder(str(six))
    assert study.name == "six" and study.spec == fresh.spec and study.environment == fresh.environment
    assert len(study.reports) == 6 * 2 == len(fresh.reports)  # six trials, evaluated at 3 and 6
    assert study.reports == fresh.reports
    assert validate_simulator.real_anytime(study, "iterations") == validate_simulator.real_anytime(fresh, "iterations")


def test_simulate_moves_a_grace_period_before_the_contrastive_loss_as_run_does(six, capsys):
    from study.cli import main

    capsys.readouterr()
    code = main(["simulate", "six", "--dir", str(six.parent), "--scheduler", "asha", "--grace", "1", "--repeats", "1",
                 "--samples", "3", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    # the tiny config starts its contrastive loss at ramp_up = 2 and evaluates every 3 iterations
    assert out.startswith("grace period moved from 1 to 3: the contrastive loss starts at ramp_up = 2")
