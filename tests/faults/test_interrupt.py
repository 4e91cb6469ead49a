"""Ctrl-C on a running study: exit 130, the command's own resume line, trials marked interrupted
(not stopped, and not pruned or failed in Optuna), then `run --resume` finishes them, each
(trial, iteration) stored once in the parts as written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from conftest import LR_BANK_SPACE as SPACE, set_args, study_fixed
from raw_parts import raw_rows, repeated
from study.cli import main, status_table
from study.run import resume_command
from study.spec import read_study_json

FIXED = study_fixed(eval_model="student")
ROOT_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _study(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study", "run", "--dir", str(root), "--quiet", "--keep-parts", *extra]


def test_ctrl_c_saves_the_study_exits_130_and_resume_finishes_each_report_once(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    root = tmp_path / "my studies"  # a --dir that needs quoting in the resume line
    env = dict(os.environ, **ROOT_ENV)
    # Its own local Ray, as `make study` starts one: the token notice must not show.
    command = _study(root, "--name", "cc", "--space", str(space), "--samples", "4", "--max-iters", "18",
                     "--grace", "6", "--reduction", "3", "--concurrency", "2", "--set", *set_args(FIXED))
    # A session of its own: Ctrl-C in a terminal reaches the whole foreground process group.
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    reports = root / "cc" / "results" / "reports"
    deadline = time.monotonic() + 300  # only a wait: what it waits for decides, not the clock
    while time.monotonic() < deadline and driver.poll() is None:
        if reports.is_dir() and len(list(reports.rglob("*.parquet"))) >= 2:
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the study ended before it could be interrupted: " + driver.stderr.read()[-2000:]
    os.killpg(driver.pid, signal.SIGINT)
    out, err = driver.communicate(timeout=300)

    assert driver.returncode == 130, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("semiseg-study")]
    assert ours == [f"semiseg-study: interrupted; resume with: semiseg-study run --resume cc --dir '{root}'"]
    for noise in ("Tuner.restore", "Traceback", "Token authentication", "Stop signal received",
                  "Trials did not complete"):
        assert noise not in out + err, noise

    trials = {t["trial_id"]: t for t in raw_rows(root / "cc", "trials")}
    cut = [t for t in trials.values() if t["status"] == "interrupted"]
    assert cut and {t["status"] for t in trials.values()} <= {"finished", "stopped", "interrupted"}
    assert all("--resume" in t["stop_reason"] and t["ended"] is None for t in cut)
    counts = {s: sum(t["status"] == s for t in trials.values()) for s in {t["status"] for t in trials.values()}}
    assert f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) in out
    table = status_table(list(trials.values()))
    assert sum(" interrupted " in line for line in table.splitlines()) == len(cut)
    assert main(["report", "cc", "--dir", str(root), "-o", str(tmp_path / "cut.html")]) == 0
    written = (tmp_path / "cut.html").read_text().split('id="written">', 1)[1].split("</p>", 1)[0]
    assert f"{len(cut)} interrupted" in written

    # Optuna still has them running: neither pruned nor failed, so TPE learns nothing from a cut.
    spec = read_study_json(root / "cc")
    study = optuna.load_study(study_name=spec.study_id, storage=f"sqlite:///{root / 'cc' / 'optuna.db'}")
    for t in cut:
        same = [o for o in study.trials if o.params == json.loads(t["params"])]
        assert [o.state for o in same] == [optuna.trial.TrialState.RUNNING], t["trial_id"]

    resumed = subprocess.run(_study(root, "--resume", "cc"), capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = {t["trial_id"]: t for t in raw_rows(root / "cc", "trials")}
    assert len(done) == 4 and {t["status"] for t in done.values()} <= {"finished", "stopped"}
    assert all(done[t["trial_id"]]["stop_reason"] is None or "asha" in done[t["trial_id"]]["stop_reason"]
               for t in cut)  # continued to its own end, not lost
    rows = raw_rows(root / "cc", "reports")  # every part as written: nothing de-duplicated it
    assert repeated(rows, "trial_id", "iteration") == {}
    for trial_id, t in done.items():
        mine = sorted(r["iteration"] for r in rows if r["trial_id"] == trial_id)
        assert mine == list(range(3, t["iterations"] + 1, 3)), trial_id
    assert main(["status", "cc", "--dir", str(root)]) == 0


def test_the_resume_line_names_a_dir_only_when_it_is_not_the_default_and_quotes_it():
    from study.location import parse

    assert resume_command("main", "studies") == resume_command("main", parse("studies")) == \
        "semiseg-study run --resume main"
    assert resume_command("main", parse("/data/my studies")) == "semiseg-study run --resume main --dir '/data/my studies'"
    assert (resume_command("main", "s3://b/p?endpoint_override=127.0.0.1:9000&scheme=http")
            == "semiseg-study run --resume main --dir 's3://b/p?endpoint_override=127.0.0.1:9000&scheme=http'")
