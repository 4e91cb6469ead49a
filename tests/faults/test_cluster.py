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

from conftest import startup_seconds, tiny_overrides

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
    startup = startup_seconds()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "study", "run", "--address", address, "--name", "x",
                             "--dir", str(tmp_path), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started - startup < 30, result.stderr[-1000:]  # beyond the imports
    assert result.returncode == 2, result.stderr[-2000:]
    assert "RAY_AUTH_TOKEN" in result.stderr and "Traceback" not in result.stderr


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
