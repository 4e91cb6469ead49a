"""An interrupted `semiseg-study retrain`, run again: the stored runs stay as written, only the
others train, and in the parts as written (no de-duplication) each (candidate, seed, iterations)
appears once."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

from conftest import ray_driver_log, sigint_by_default
from raw_parts import raw_rows, repeated
from study.retrain import retrain

RUN_KEY = ("candidate", "seed", "iterations")
PLAN = {"top": 1, "seeds": 1, "iterations": 6}  # 3 configs (the winner, the paper point, supervised) x 1 seed


def test_an_interrupted_retrain_run_again_trains_only_the_rest_and_stores_each_run_once(ray_local, small_study,
                                                                                         tmp_path):
    """Ctrl-C a real `semiseg-study retrain` (a second driver on the session's Ray) once a run is
    stored, then retrain again here, then once more."""
    root = tmp_path / "studies"
    folder = root / "tiny"
    shutil.copytree(small_study, folder, ignore=shutil.ignore_patterns("ablate", "retrain"))
    # retrain joins the session's Ray (else it would start one of its own, as the study ran without --address).
    address = ray_local.get_runtime_context().gcs_address
    parts = folder / "retrain"
    driver = subprocess.Popen([sys.executable, "-m", "study", "retrain", "tiny", "--dir", str(root), "--quiet",
                               "--address", address, *[f"--{k}={v}" for k, v in PLAN.items()]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=sigint_by_default)
    deadline = time.monotonic() + 240  # bounds the wait only
    while not list(parts.glob("*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    # (Once, in a fresh clone, this driver exited 1 with the right line on stderr: Ray's log says why.)
    assert driver.returncode == 130 and "the same command again trains only the others" in err, (
        err, ray_driver_log(ray_local, driver.pid))

    before = raw_rows(folder, "retrain")
    assert not repeated(before, *RUN_KEY)
    assert 1 <= len(before) < 3, "the interrupt came too late to test a resume"

    said: list[str] = []
    rows = retrain(folder, progress=False, say=said.append, **PLAN)
    written = raw_rows(folder, "retrain")
    assert not repeated(written, *RUN_KEY) and len(written) == len(rows) == 3  # each run once, as written
    assert said == [f"retraining 3 configs x 1 seeds: {3 - len(before)} runs to do ({len(before)} stored already)"]
    by_key = {tuple(r[k] for k in RUN_KEY): json.dumps(r, default=str) for r in written}
    assert all(by_key[tuple(r[k] for k in RUN_KEY)] == json.dumps(r, default=str) for r in before)  # untouched

    said.clear()
    assert len(retrain(folder, progress=False, say=said.append, **PLAN)) == 3
    assert said == [] and len(raw_rows(folder, "retrain")) == 3  # a third call trains and writes nothing
