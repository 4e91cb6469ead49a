"""A worker node dies mid-study: its trials resume from their checkpoints on the node that is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

HERE = Path(__file__).parent


def test_trials_of_a_removed_node_resume_on_the_other_and_every_row_lands_once(tmp_path):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(HERE.parents[1]))
    run = subprocess.run([sys.executable, str(HERE / "node_loss_driver.py"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["removed"], "no trial reached the worker node before the study ended"
    worker = seen["worker"]

    folder = tmp_path / "nodes"
    trials = ds.dataset(folder / "results" / "trials").to_table().to_pylist()
    assert len(trials) == 6 and {t["status"] for t in trials} == {"finished"}  # every trial accounted for
    rows = ds.dataset(folder / "results" / "reports").to_table().to_pylist()
    keys = [(r["trial_id"], r["iteration"]) for r in rows]
    assert len(keys) == len(set(keys))  # each (trial, iteration) once
    for t in trials:
        assert sorted(r["iteration"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(6, 61, 6))

    # The trials that were on the worker when it went: restarted (counted in Parquet) on the head
    # node; those that had reported there continue from their last checkpoint, not from iteration 0.
    moved = [t for t in trials if (t["retries"] or 0) > 0]
    assert moved, "no trial was running on the removed node"
    resumed = 0
    for t in moved:
        results = seen["results"][t["trial_id"]]  # in the order Tune logged them
        on_worker = [i for i, r in enumerate(results) if worker in r[1]]
        if not on_worker:
            continue  # it started there but died before its first checkpoint: it began again
        before, after = results[:on_worker[-1] + 1], results[on_worker[-1] + 1:]
        assert after and all(worker not in r[1] for r in after)
        assert after[0][0] > 6 and after[0][0] - 6 in [r[0] for r in before]
        assert worker not in t["node"]
        resumed += 1
    assert resumed >= 1
