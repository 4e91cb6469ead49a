"""The study driver is SIGKILLed mid-study, then resumed: every trial and every row exactly once,
and the Optuna storage agrees with the Parquet trials table.

Both studies run with --keep-parts, and every exactly-once check reads the parts as written
(tests/raw_parts.py): compaction and the store's readers would hide a row written twice. The
local one also checks what the resume inherits: ASHA's rungs (asha_rungs.json) and the trials
that Tune restores from their checkpoints, by value against an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna

from conftest import LR_BANK_SPACE as SPACE, set_args, study_fixed
from raw_parts import asha_decisions, bit_differences, raw_rows, repeated, tune_results, uninterrupted
from study.location import Location, as_location
from study.records import RUNNING, stored_config
from study.run import run_study
from study.spec import StudySpec, read_study_json

FIXED = study_fixed(eval_model="student")
STATES = {"finished": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}
# ASHA on 30 iterations from a grace of 9, reduction 3: rungs at 9 and 27.
STUDY = ["--samples", "6", "--max-iters", "30", "--grace", "9", "--reduction", "3", "--concurrency", "2"]


def _kill_when(driver: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """SIGKILL the driver at a moment ``ready()`` holds (polled; ``timeout`` only bounds the wait).

    The driver is frozen (SIGSTOP) while ``ready`` reads its files, so what it saw is what the
    driver leaves behind: no snapshot or report can land between the look and the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if ready():  # a first look while it runs, then the one that counts
            os.kill(driver.pid, signal.SIGSTOP)
            if ready():
                os.kill(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
                return
            os.kill(driver.pid, signal.SIGCONT)
        time.sleep(0.1)
    assert driver.poll() is None, "the study ended before it could be interrupted: " + driver.stderr.read()[-500:]
    raise AssertionError("the study did not reach the point to interrupt it at in time")


def _rungs(folder) -> dict | None:
    rungs = as_location(folder) / "asha_rungs.json"
    return json.loads(rungs.read_text()) if rungs.is_file() else None


def _first_rung(rungs: dict | None) -> dict[str, float]:
    return rungs["brackets"][0][-1][1] if rungs else {}  # Ray keeps the highest milestone first


def _tunes_snapshot(study: Path | Location) -> dict[str, tuple[str, int]]:
    """Per trial, its status and the iteration of its last result in Tune's last saved experiment
    state (in the study's folder or bucket): what a resume restores. An ended trial is not run
    again; a running one continues from the checkpoint of that result or the one before (Tune
    registers each before the next result)."""
    experiment = as_location(study) / "tune" / as_location(study).name
    try:
        states = sorted(name for name, is_file in experiment.list() if is_file and name.startswith("experiment_state-"))
        saved = json.loads((experiment / states[-1]).read_text())["trial_data"] if states else []
        trials = [(json.loads(trial), json.loads(run)) for trial, run in saved]
    except (OSError, ValueError):  # not there yet, or being written
        return {}
    return {t["trial_id"]: (t["status"], int(run["last_result"].get("iteration", 0))) for t, run in trials}


def _unsaved(study: Path | Location) -> tuple[set[str], set[str]]:
    """Trials of the trials table unknown to Tune's last snapshot, started after Tune saved its
    state: those running (as many as run at once), which a resume cannot restore and records lost,
    and those that also ended before the kill, whose results stay (Tune samples a trial in their
    place, so the study has one more)."""
    unknown = [t for t in raw_rows(study, "trials") if t["trial_id"] not in _tunes_snapshot(study)]
    return ({t["trial_id"] for t in unknown if t["status"] == RUNNING},
            {t["trial_id"] for t in unknown if t["status"] != RUNNING})


def test_resume_after_a_killed_driver_finishes_the_same_trials_exactly_once(ray_local, tmp_path):
    """The driver (a subprocess on the session's Ray) is SIGKILLed mid-study, then resumed here. The
    kill comes once (1) ASHA has judged two trials at its first rung and one of them has ended in
    Tune's saved state, so the resume cannot learn its score there by running it again, and (2) a
    running trial is behind in Tune's saved state, so the resume restores it from a checkpoint and
    replays reports that the store holds already."""
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    root = tmp_path / "studies"
    folder = root / "resume"
    address = ray_local.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "study", "run", "--name", "resume", "--dir", str(root), "--space", str(space),
               *STUDY, "--address", address, "--quiet", "--keep-checkpoints", "0", "--checkpoint-every", "0",
               "--keep-parts", "--set", *set_args(FIXED)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def ready() -> bool:
        snapshot, rung = _tunes_snapshot(folder), _first_rung(_rungs(folder))
        stored: dict[str, int] = {}  # the last report stored of each trial (trials.parquet may lag behind it)
        for report in raw_rows(folder):
            stored[report["trial_id"]] = max(stored.get(report["trial_id"], 0), report["iteration"])
        ended = {t for t, (status, _) in snapshot.items() if status == "TERMINATED"}
        # Running in the snapshot from a checkpoint of iteration 3 or later, with a report stored
        # after the snapshot's: the resume restores it and replays a report the store holds.
        behind = [t for t, (status, last) in snapshot.items()
                  if status == "RUNNING" and last >= 2 * FIXED["eval_every"] and stored.get(t, 0) > last]
        return len(rung) >= 2 and bool(set(rung) & ended) and bool(behind)

    _kill_when(driver, ready, timeout=240)

    written = raw_rows(folder)
    assert written and not repeated(written, "trial_id", "iteration")  # the first run: each report once
    rungs_at_kill = _rungs(folder)
    unsaved = _unsaved(folder)

    run_study(StudySpec(name="resume"), root, resume=True, compact=False, progress=False, say=lambda _: None)
    all_trials, rows = raw_rows(folder, "trials"), raw_rows(folder)
    assert not repeated(all_trials, "trial_id")
    spec = read_study_json(folder)
    study = optuna.load_study(study_name=spec.study_id, storage=f"sqlite:///{folder / 'optuna.db'}")
    _each_trial_once_and_optuna_agrees(all_trials, rows, study, unsaved)
    _asha_decided_as_its_rungs_say(rungs_at_kill, _rungs(folder), all_trials, rows, spec)
    _restored_trials_report_as_an_uninterrupted_run(tune_results(folder), all_trials, rows)


def _asha_decided_as_its_rungs_say(at_kill: dict, final: dict, trials: list[dict], rows: list[dict],
                                   spec: StudySpec) -> None:
    """The resumed driver kept every rung entry recorded before the kill, and every trial stopped or
    went on at each rung exactly as ASHA's rule, applied to the final file, says."""
    for (milestone, before), (same, after) in zip(at_kill["brackets"][0], final["brackets"][0]):
        assert milestone == same
        # In their place, first: the trials judged after the resume were judged against them.
        assert list(after.items())[:len(before)] == list(before.items()), (milestone, before, after)
    judged_after = [(m, t) for m, t, _, _ in asha_decisions(final, spec.reduction)
                    if t not in dict(at_kill["brackets"][0]).get(m, {}) and dict(at_kill["brackets"][0]).get(m)]
    assert judged_after, "no trial reached a rung after the resume that was judged before the kill"

    by_id = {t["trial_id"]: t for t in trials}
    score = {(r["trial_id"], r["iteration"]): r["val_miou"] for r in rows}
    for milestone, trial_id, recorded, stopped in asha_decisions(final, spec.reduction):
        assert score[(trial_id, int(milestone))] == recorded  # the score it reported at that rung
        t = by_id[trial_id]
        if "driver died" in (t["stop_reason"] or "") or milestone >= spec.max_iters:
            continue  # lost with the driver, after its rung was recorded; or at the end of its budget anyway
        fate = (t["status"], t["iterations"]) if stopped else ("went on", t["iterations"] > milestone)
        assert fate == (("stopped", milestone) if stopped else ("went on", True)), (milestone, trial_id, t)


def _restored_trials_report_as_an_uninterrupted_run(logged: dict[str, list[dict]], trials: list[dict],
                                                    rows: list[dict]) -> None:
    """A trial Tune restored from its checkpoint reports at its next evaluation, to the bit, what an
    uninterrupted run of its config and seed reports there (and so does every row stored of it)."""
    restored = {}
    for trial_id, results in logged.items():
        # Tune's first result of a restored trial: the first since the restore, yet not its first
        # evaluation (a trial that began again reports iteration eval_every first).
        first = [r for r in results if r["iterations_since_restore"] == 1 and r["iteration"] > FIXED["eval_every"]]
        if first:
            restored[trial_id] = first[0]
    assert restored, {t: [r["iteration"] for r in results] for t, results in logged.items()}
    by_id = {t["trial_id"]: t for t in trials}
    for trial_id, first in restored.items():
        reference = uninterrupted(stored_config(by_id[trial_id]), first["iteration"])
        assert not bit_differences(first, reference[first["iteration"]]), (trial_id, first["iteration"])
        for row in rows:
            if row["trial_id"] == trial_id and row["iteration"] <= first["iteration"]:
                assert not bit_differences(row, reference[row["iteration"]]), (trial_id, row["iteration"])


def _each_trial_once_and_optuna_agrees(all_trials: list[dict], rows: list[dict], study: optuna.Study,
                                       unsaved: tuple[set[str], set[str]], optuna_from_snapshot: bool = False) -> None:
    # A trial started after Tune's last snapshot is recorded as lost, and its place sampled again;
    # one that also ended before the kill keeps its result, and its place is sampled again too.
    running, ended = unsaved
    lost = [t for t in all_trials if "driver died" in (t["stop_reason"] or "")]
    trials = [t for t in all_trials if t not in lost]
    assert {t["trial_id"] for t in lost} == running
    assert ended <= {t["trial_id"] for t in trials}
    assert len(trials) == 6 + len(ended)
    assert {t["status"] for t in all_trials} <= {"finished", "stopped"}
    assert not repeated(rows, "trial_id", "iteration")  # read raw: a row written twice shows
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
    # but never started before the kill is failed too, and has no Parquet row. A driver that
    # resumes from the bucket starts from Optuna's snapshot, saved with Tune's: a trial asked for
    # after it is not there at all (the seeded sampler may ask for its params again, for the trial
    # in its place), and the count of told trials above is the check.
    if not optuna_from_snapshot:
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
               *STUDY, "--address", address, "--quiet", "--keep-checkpoints", "0", "--checkpoint-every", "0",
               "--keep-parts", "--set", *assignments]
    driver = subprocess.Popen(command, cwd=first, env=env[first], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    study_uri = as_location(root) / "resume"
    reports = "killed/studies/resume/results/reports"
    parts_in = pafs.FileSelector(reports, allow_not_found=True, recursive=True)  # the driver's folder of parts
    _kill_when(driver, lambda: len(fs.get_file_info(parts_in)) >= 6, timeout=180)
    written = raw_rows(study_uri)
    assert written and not repeated(written, "trial_id", "iteration")  # the first run: each report once
    unsaved = _unsaved(study_uri)

    resumed = subprocess.run([sys.executable, "-m", "study", "run", "--resume", "resume", "--dir", root, "--quiet",
                              "--keep-parts"], cwd=second, env=env[second], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert S3_SECRET not in resumed.stdout + resumed.stderr
    all_trials, rows = raw_rows(study_uri, "trials"), raw_rows(study_uri)
    assert len(fs.get_file_info(pafs.FileSelector(reports, recursive=True))) > 2  # not compacted: the parts as written
    assert not repeated(all_trials, "trial_id")
    spec = json.loads(fs.open_input_stream("killed/studies/resume/study.json").read())["spec"]
    snapshot = tmp_path / "optuna.db"
    snapshot.write_bytes(fs.open_input_stream("killed/studies/resume/optuna.db").read())
    study = optuna.load_study(study_name=spec["study_id"], storage=f"sqlite:///{snapshot}")
    _each_trial_once_and_optuna_agrees(all_trials, rows, study, unsaved, optuna_from_snapshot=True)
