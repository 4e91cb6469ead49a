"""Trials that fail: a config that diverges, and one that raises; the study goes on around them."""

from __future__ import annotations

import json
import re

import optuna
import pytest

from conftest import tiny_overrides
from study.run import run_study
from study.spec import StudySpec, read_study_json
from study.store import ResultStore

# fault_nan_at 20 makes the loss NaN at iteration 20 on every machine (a large learning rate
# diverges or not depending on the CPU's float rounding); a trial asking for a GPU on this
# GPU-less machine raises in the worker, as it would on a node without CUDA.
SPACE = """
fixed: {lr: 0.01}
paper_point: {fault_nan_at: -1, device: cpu}
params:
  fault_nan_at: {type: categorical, choices: [-1, 20]}
  device: {type: categorical, choices: [cpu, "cuda:0"]}
"""


@pytest.fixture(scope="module")
def faulty_study(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    space = root / "faulty.yaml"
    space.write_text(SPACE)
    fixed = tiny_overrides(eval_every=6, ramp_up=2, bank_lead=1)
    fixed.pop("iterations")
    spec = StudySpec(name="faulty", space=str(space), samples=6, max_iters=60, grace=6, scheduler="fifo",
                     searcher="random", concurrency=2, fixed=fixed, seed=6)  # seed 6: each kind of trial occurs
    summary = run_study(spec, root, progress=False, say=lambda _: None)
    return root / "faulty", summary


def _trials(folder):
    return {t["trial_id"]: t for t in ResultStore(folder, "faulty").trials().to_pylist()}


def test_the_study_runs_every_trial_to_an_end(faulty_study):
    folder, summary = faulty_study
    trials = _trials(folder)
    assert len(trials) == 6 and summary["best"] is not None
    kinds = {(json.loads(t["params"])["fault_nan_at"], json.loads(t["params"])["device"]) for t in trials.values()}
    assert (-1, "cpu") in kinds and (20, "cpu") in kinds and any(d == "cuda:0" for _, d in kinds), kinds
    for t in trials.values():
        params = json.loads(t["params"])
        if params["device"] == "cuda:0":
            continue
        if params["fault_nan_at"] == -1:
            assert t["status"] == "finished" and t["iterations"] == 60


def test_a_diverged_trial_is_errored_with_its_reason_and_failed_in_optuna(faulty_study):
    folder, _ = faulty_study
    diverged = [t for t in _trials(folder).values() if json.loads(t["params"]) == {"fault_nan_at": 20, "device": "cpu"}]
    assert diverged
    for t in diverged:
        assert t["status"] == "errored" and re.match(r"diverged: loss is nan at iteration 20 ", t["stop_reason"])
        assert t["retries"] in (None, 0)  # the same config would diverge again: no retry
    spec = read_study_json(folder)
    study = optuna.load_study(study_name=spec.study_id, storage=f"sqlite:///{folder / 'optuna.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == len(diverged) + sum(json.loads(t["params"])["device"] == "cuda:0"
                                              for t in _trials(folder).values())


def test_a_raising_trial_is_retried_then_recorded_with_its_error(faulty_study):
    folder, _ = faulty_study
    raised = [t for t in _trials(folder).values() if json.loads(t["params"])["device"] == "cuda:0"]
    assert raised
    for t in raised:
        assert t["status"] == "errored" and t["stop_reason"] == "raised"
        assert t["retries"] == 2  # FailureConfig(max_failures=2), then it is given up
        assert "cuda" in t["error"].lower() and len(t["error"].splitlines()) == 1
        assert t["ended"] is not None
