"""The study driver is SIGKILLed mid-study, then resumed: every trial and every row exactly once,
and the Optuna storage agrees with the Parquet trials table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.dataset as ds

from conftest import LR_BANK_SPACE as SPACE, set_args, study_fixed
from study.run import run_study
from study.spec import StudySpec, read_study_json

FIXED = study_fixed(eval_model="student")
STATES = {"finished": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}


def test_resume_after_a_killed_driver_finishes_the_same_trials_exactly_once(ray_local, tmp_path):
    """The driver (a subprocess on the session's Ray) is SIGKILLed mid-study, then resumed here."""
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    root = tmp_path / "studies"
    address = ray_local.get_runtime_context().gcs_address
    assignments = set_args(FIXED)
    command = [sys.executable, "-m", "study", "run", "--name", "resume", "--dir", str(root), "--space", str(space),
               "--samples", "6", "--max-iters", "30", "--grace", "9", "--reduction", "3", "--concurrency", "2",
               "--address", address, "--quiet", "--keep-checkpoints", "0", "--set", *assignments]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reports = root / "resume" / "results" / "reports"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if reports.is_dir() and len(list(reports.glob("*.parquet"))) >= 6:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the study ended before it could be interrupted: " + driver.stderr.read()[-500:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)

    run_study(StudySpec(name="resume"), root, resume=True, progress=False, say=lambda _: None)
    folder = root / "resume"
    all_trials = ds.dataset(folder / "results" / "trials").to_table().to_pylist()
    rows = ds.dataset(folder / "results" / "reports").to_table().to_pylist()
    spec = read_study_json(folder)
    study = optuna.load_study(study_name=spec.study_id, storage=f"sqlite:///{folder / 'optuna.db'}")
    _each_trial_once_and_optuna_agrees(all_trials, rows, study)


def _each_trial_once_and_optuna_agrees(all_trials: list[dict], rows: list[dict], study: optuna.Study) -> None:
    # A trial started in the last second before the kill may be unknown to Tune's snapshot:
    # it is recorded as lost and its place sampled again.
    lost = [t for t in all_trials if "driver died" in (t["stop_reason"] or "")]
    trials = [t for t in all_trials if t not in lost]
    assert len(trials) == 6 and len(lost) <= 1
    assert {t["status"] for t in all_trials} <= {"finished", "stopped"}
    keys = [(r["trial_id"], r["iteration"]) for r in rows]
    assert len(keys) == len(set(keys))
    for t in trials:  # every evaluation of every trial is there, once
        mine = sorted(r["iteration"] for r in rows if r["trial_id"] == t["trial_id"])
        assert mine == list(range(3, t["iterations"] + 1, 3))

    # Optuna agrees: one trial per Parquet trial, same params, same outcome; lost ones failed.
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    told = [t for t in study.trials if t.state in STATES.values()]
    assert len(told) == len(trials)
    unmatched = list(told)
    for t in trials:
        params = json.loads(t["params"])
        match = [o for o in unmatched if o.params == params and o.state == STATES[t["status"]]]
        assert match, f"trial {t['trial_id']} ({t['status']}, {params}) is not in Optuna as such"
        if t["status"] == "finished":
            assert match[0].value == t["last_val_miou"]
        unmatched.remove(match[0])
    # A lost trial is failed in Optuna (so constant liar stops counting it); a trial asked for
    # but never started before the kill is failed too, and has no Parquet row.
    failed = [o.params for o in study.trials if o.state == optuna.trial.TrialState.FAIL]
    assert all(json.loads(t["params"]) in failed for t in lost)


def test_a_driver_killed_mid_study_resumes_elsewhere_with_only_the_s3_uri(ray_local, s3_server, tmp_path):
    """``--dir s3://...``: the driver is SIGKILLed mid-study, and a driver in another folder, with an
    empty HOME and an empty cache (no Optuna working copy, no Tune staging files), resumes it."""
    import pyarrow.fs as pafs

    from conftest import S3_SECRET

    endpoint, make_bucket = s3_server
    root = make_bucket("killed").replace("s3://killed", "s3://killed/studies")
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    address = ray_local.get_runtime_context().gcs_address
    assignments = set_args(FIXED)
    first, second = tmp_path / "first", tmp_path / "second"
    env = {}
    for folder in (first, second):
        (folder / "home").mkdir(parents=True)
        env[folder] = dict(os.environ, HOME=str(folder / "home"), SEMISEG_CACHE=str(folder / "home" / "cache"),
                           PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        token = Path.home() / ".ray" / "auth_token"  # the session Ray's token: the cluster's, not the study's
        if token.is_file():
            env[folder].setdefault("RAY_AUTH_TOKEN_PATH", str(token))
    command = [sys.executable, "-m", "study", "run", "--name", "resume", "--dir", root, "--space", str(space),
               "--samples", "6", "--max-iters", "30", "--grace", "9", "--reduction", "3", "--concurrency", "2",
               "--address", address, "--quiet", "--keep-checkpoints", "0", "--set", *assignments]
    driver = subprocess.Popen(command, cwd=first, env=env[first], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    reports = "killed/studies/resume/results/reports"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        parts = fs.get_file_info(pafs.FileSelector(reports, allow_not_found=True))
        if len(parts) >= 6:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the study ended before it could be interrupted: " + driver.stderr.read()[-500:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)

    resumed = subprocess.run([sys.executable, "-m", "study", "run", "--resume", "resume", "--dir", root, "--quiet"],
                             cwd=second, env=env[second], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert S3_SECRET not in resumed.stdout + resumed.stderr
    all_trials = ds.dataset("killed/studies/resume/results/trials", filesystem=fs).to_table().to_pylist()
    rows = ds.dataset(reports, filesystem=fs).to_table().to_pylist()
    spec = json.loads(fs.open_input_stream("killed/studies/resume/study.json").read())["spec"]
    snapshot = tmp_path / "optuna.db"
    snapshot.write_bytes(fs.open_input_stream("killed/studies/resume/optuna.db").read())
    study = optuna.load_study(study_name=spec["study_id"], storage=f"sqlite:///{snapshot}")
    _each_trial_once_and_optuna_agrees(all_trials, rows, study)
