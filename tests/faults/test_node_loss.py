"""A worker node dies mid-study: its trials resume from their checkpoints in object storage on the
node that is left, each report is stored once (read raw, from the parts as written), and a trial
restored from its checkpoint reports, to the bit, what an uninterrupted run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from raw_parts import bit_differences, repeated, uninterrupted
from trainer.config import TrainConfig

HERE = Path(__file__).parent


def test_trials_of_a_removed_node_resume_on_the_other_and_every_row_lands_once(tmp_path):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(HERE.parents[1]))
    run = subprocess.run([sys.executable, str(HERE / "node_loss_driver.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["removed"], "no trial reached the worker node before the study ended"
    worker = seen["worker"]

    trials, rows = seen["trials"], seen["reports"]  # read from the bucket by the driver, whose server is gone
    assert seen["checkpoints"] > 0  # the trials' checkpoints were in object storage
    assert len(trials) == 6 and {t["status"] for t in trials} == {"finished"}  # every trial accounted for
    assert not repeated(trials, "trial_id")
    assert not repeated(rows, "trial_id", "iteration")  # each (trial, iteration) once, in the parts as written
    for t in trials:
        assert sorted(r["iteration"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(6, 61, 6))

    # The trials that were on the worker when it went: restarted (counted in Parquet) on the head
    # node from the last checkpoint Tune had registered. Tune registers a checkpoint only after the
    # callbacks have stored its result (a separate save step), so a node that dies in between costs
    # that one evaluation: it is trained again, and its row, stored already, is not written twice.
    moved = [t for t in trials if (t["retries"] or 0) > 0]
    assert moved, "no trial was running on the removed node"
    # Where each evaluation ran comes from Parquet (Tune's result.json sometimes loses the lines a
    # trial logged before its node died); how it went on comes from Tune's results after the move.
    resumed = 0
    for t in moved:
        on_worker = {r["iteration"] for r in rows if r["trial_id"] == t["trial_id"] and worker in r["node"]}
        on_worker |= {r["iteration"] for r in seen["results"][t["trial_id"]] if worker in r["node"]}
        if not on_worker:
            continue  # it started there but died before its first checkpoint: it began again
        after = [r for r in seen["results"][t["trial_id"]] if worker not in r["node"]]  # in Tune's order
        assert after, (t["trial_id"], on_worker)
        resumed_from = after[0]["iteration"] - 6  # the checkpoint it continued from; 0: it began again
        where = (t["trial_id"], on_worker, [r["iteration"] for r in after[:2]])
        assert resumed_from in on_worker | {0}, where
        assert resumed_from >= max(on_worker) - 6, where  # one evaluation lost at most
        assert worker not in t["node"]
        if resumed_from > 0:
            # Restored from the checkpoint the removed node had sent to the bucket: its next evaluation
            # is, to the bit, an uninterrupted run's (and so is every row stored of it up to there).
            reference = uninterrupted(TrainConfig.from_dict(t["config"]), after[0]["iteration"])
            assert not bit_differences(after[0], reference[after[0]["iteration"]]), where
            for row in rows:
                if row["trial_id"] == t["trial_id"] and row["iteration"] <= after[0]["iteration"]:
                    assert not bit_differences(row, reference[row["iteration"]]), (where, row["iteration"])
            resumed += 1
    assert resumed >= 1, json.dumps({"worker": worker, "moved": [(t["trial_id"], t["retries"], t["node"]) for t in moved],
                                     "results": seen["results"]})[:6000]
