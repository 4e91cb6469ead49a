"""Real Ray clusters on loopback: `ray start --head` with a token (and without one), two nodes, logical GPUs.

Each cluster lives in its own processes, apart from the session's Ray, and is ended by
the ids of the processes this test started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import tiny_overrides

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(HERE.parents[1]))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def head_with_token():
    """`ray start --head --block` on 127.0.0.1 with token authentication, in its own process group."""
    port = _free_port()
    token = uuid.uuid4().hex
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ray_cli = Path(sys.executable).with_name("ray")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's Unix sockets live under it
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("ray start --head did not open its port within 60 s")
        time.sleep(3)  # the raylet registers after the GCS opens its port
        yield f"127.0.0.1:{port}", env
    finally:
        # The head and every Ray process it spawned share its process group, and nothing else does.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_study_on_a_ray_start_head_cluster_with_token(head_with_token, tmp_path):
    address, env = head_with_token
    fixed = tiny_overrides(eval_every=3, ramp_up=2, bank_lead=1)
    fixed.pop("iterations")
    assignments = [f"{k}={json.dumps(v)}" for k, v in fixed.items()]
    result = subprocess.run([sys.executable, "-m", "study", "run", "--address", address, "--name", "remote",
                             "--dir", str(tmp_path), "--space", "contrastive", "--samples", "3", "--max-iters", "6",
                             "--grace", "3", "--quiet", "--set", *assignments],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 trials" in result.stdout and "best trial" in result.stdout
    assert env["RAY_AUTH_TOKEN"] not in result.stdout + result.stderr
    # The token reaches no file of the study: logs, Parquet, study.json, Tune's state.
    for path in (tmp_path / "remote").rglob("*"):
        if path.is_file():
            assert env["RAY_AUTH_TOKEN"].encode() not in path.read_bytes(), path


def test_a_missing_token_fails_fast_with_a_hint(head_with_token, tmp_path):
    address, env = head_with_token
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)  # no token file from an earlier `ray start` either
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "study", "run", "--address", address, "--name", "x",
                             "--dir", str(tmp_path / "studies"), "--quiet"], env=env, capture_output=True, text=True,
                            timeout=600)
    # A generous bound, not a baseline: the refusal takes seconds here; 150 s leaves a loaded 2-core
    # machine 30 times that, and still tells a refusal from a client that retries for minutes.
    assert time.monotonic() - started < 150, result.stderr[-1000:]
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err  # one line: no traceback, no log of Ray's
    assert f"--address {address}: Ray refused the connection" in err and "RAY_AUTH_TOKEN" in err, err
    assert not (tmp_path / "studies").exists()


def test_two_node_cluster_and_fractional_logical_gpus(tmp_path):
    result = subprocess.run([sys.executable, str(HERE / "cluster_driver.py"), str(tmp_path)], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["cpu_trials"] == 4 and seen["gpu_trials"] == 4
    assert len(seen["cpu"]["nodes"]) == 2  # trials ran on both nodes
    trials = list(seen["gpu"]["trials"].values())
    assert len(trials) == 4 and all(gpus in ("0", "1") for gpus, _, _ in trials)  # one GPU each
    # half a GPU each: two trials held the same GPU at the same time
    shared = [(a, b) for i, a in enumerate(trials) for b in trials[i + 1:]
              if a[0] == b[0] and a[1] < b[2] and b[1] < a[2]]
    assert shared
