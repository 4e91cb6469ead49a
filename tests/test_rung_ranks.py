"""How well an early rung ranks the final score, on hand-made curves whose answer is known."""

from __future__ import annotations

import math

import pytest

from study.records import FINISHED, STOPPED
from study.rung_ranks import MIN_TRIALS, POOR, grace_warning, rung_ranks, spearman


def _study(curves: dict[str, list[float]], status: dict[str, str] | None = None):
    """Reports every 100 iterations and trial rows, as the store holds them."""
    reports = [{"trial_id": tid, "iteration": 100 * (i + 1), "val_miou": v}
               for tid, vals in curves.items() for i, v in enumerate(vals)]
    trials = [{"trial_id": tid, "status": (status or {}).get(tid, FINISHED)} for tid in curves]
    return reports, trials


def test_spearman_matches_known_rankings():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))  # a constant side has no order
    assert math.isnan(spearman([1], [2]))


def test_an_early_rung_that_reverses_the_order_is_flagged_a_later_one_is_not():
    # At 100 the order is the reverse of the final one; from 200 on it is the final order.
    curves = {f"t{i}": [0.5 - 0.05 * i, 0.1 + 0.05 * i, 0.2 + 0.05 * i] for i in range(6)}
    ranks = rung_ranks(*_study(curves))
    assert [(r.iteration, r.trials) for r in ranks] == [(100, 6), (200, 6)]  # the last iteration is the final
    assert ranks[0].spearman == pytest.approx(-1.0) and ranks[0].poor
    assert ranks[1].spearman == pytest.approx(1.0) and not ranks[1].poor
    warning = grace_warning(ranks, 100)
    assert "iteration 100" in warning and "-1.00 over 6 trials" in warning and "--grace 200" in warning
    assert grace_warning(ranks, 200) is None


def test_trials_that_did_not_run_to_the_end_do_not_count():
    curves = {f"t{i}": [0.5 - 0.05 * i, 0.1 + 0.05 * i, 0.2 + 0.05 * i] for i in range(MIN_TRIALS)}
    curves["short"] = [0.9]                   # stopped at the first rung: no final score
    curves["errored"] = [0.9, 0.9, 0.9]       # full length, but not a finished trial
    ranks = rung_ranks(*_study(curves, {"short": STOPPED, "errored": "errored"}))
    assert {r.trials for r in ranks} == {MIN_TRIALS}
    assert ranks[0].spearman == pytest.approx(-1.0)


def test_too_few_full_trials_are_not_flagged():
    curves = {f"t{i}": [0.5 - 0.05 * i, 0.2 + 0.05 * i] for i in range(MIN_TRIALS - 1)}
    ranks = rung_ranks(*_study(curves))
    assert ranks[0].spearman == pytest.approx(-1.0) and ranks[0].spearman < POOR
    assert not ranks[0].known and not ranks[0].poor
    assert grace_warning(ranks, 100) is None
