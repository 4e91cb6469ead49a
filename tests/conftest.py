"""Shared fixtures: a per-session cache for the pretrained digit backbone, tiny configs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

# Under CI a skip is a failure naming what is missing; only tests marked gpu may skip (tests/ci_gate.py).
from ci_gate import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 - pytest's hooks

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to 127.0.0.1 only

# Credentials of the loopback S3 server (tests/test_storage.py), set before any Ray starts: its
# workers inherit them, as a cluster node's own environment would hold them. The secret is a
# string no file of a study may contain.
S3_SECRET = "semiseg-test-secret-5c1e7a"
os.environ.update(AWS_ACCESS_KEY_ID="semiseg-test-key", AWS_SECRET_ACCESS_KEY=S3_SECRET,
                  AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep pretrained weights of the tests out of the user's cache."""
    os.environ["SEMISEG_CACHE"] = str(tmp_path_factory.mktemp("semiseg-cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


def sigint_by_default() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT. A shell that starts pytest in the
    background (``make test &``, a CI step run so) makes SIGINT ignored, and children inherit
    that: the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ray_driver_log(ray, pid: int) -> str:
    """The end of Ray's own log of a driver process (process ``pid``) that joined the session
    ``ray``: what Ray's C++ side said while that driver shut down, for an assertion's message."""
    try:
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        logs = sorted((session / "logs").glob(f"python-core-driver-*_{pid}.log"))
        return logs[-1].read_text()[-3000:] if logs else f"(no core log of pid {pid} in {session})"
    except Exception as err:  # noqa: BLE001 - a diagnostic only
        return f"(Ray's core log unreadable: {err})"


def tiny_overrides(**changes: object) -> dict:
    """A digits config small enough for a test: 32x32 scenes, every code path on within a few steps."""
    values = {
        "dataset": "digits", "image_size": 32, "digits_scenes": 64, "digits_eval_scenes": 16,
        "batch_labeled": 4, "batch_unlabeled": 4, "iterations": 12, "eval_every": 6,
        "pretrained": "none", "ramp_up": 4, "bank_lead": 2, "confidence_threshold": 0.0,
        "bank_size": 16, "labeled_fraction": 0.25, "classmix_prob": 1.0,
    }
    values.update(changes)
    return values


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, bound to loopback, no dashboard."""
    ray = pytest.importorskip("ray", reason="ray is missing (pip install -e '.[test]')")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = not ray.is_initialized()
    if started:
        # address="local": a new instance, even where a `ray start` cluster of this machine is recorded.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


# A two-param space for the study-level fault and storage tests; the learning rate spreads tiny
# trials apart (the report's importance needs scores that differ).
LR_BANK_SPACE = """
paper_point: {lr: 0.01, bank_size: 16}
params:
  lr: {type: float, low: 0.0001, high: 0.3, log: true}
  bank_size: {type: int, low: 4, high: 64, log: true}
"""


def study_fixed(**changes: object) -> dict:
    """``tiny_overrides`` for a study's fixed settings: the study's --max-iters sets the iterations."""
    fixed = tiny_overrides(eval_every=3, ramp_up=2, bank_lead=1, **changes)
    fixed.pop("iterations")
    return fixed


def set_args(fixed: dict) -> list[str]:
    """``fixed`` as the CLI's ``--set`` values."""
    return [f"{k}={json.dumps(v)}" for k, v in fixed.items()]


REPORT_TINY = tiny_overrides(eval_every=3, ramp_up=2, bank_lead=1, eval_model="student", contrastive_loss="infonce")
REPORT_TINY.pop("iterations")

REPORT_SPACE = """
paper_point: {lr: 0.01, bank_size: 16, temperature: 0.1}
params:
  lr: {type: float, low: 0.0001, high: 0.3, log: true}
  bank_size: {type: int, low: 4, high: 64, log: true}
  temperature: {type: float, low: 0.03, high: 1.0, log: true}
groups:
  memory bank: [bank_size, temperature]
"""


@pytest.fixture(scope="session")
def small_study(ray_local, tmp_path_factory) -> Path:
    """A finished 8-trial study on tiny data (InfoNCE, three searched params), for the report tests."""
    from study.run import run_study
    from study.spec import StudySpec

    root = tmp_path_factory.mktemp("studies")
    space = root / "tiny.yaml"
    space.write_text(REPORT_SPACE)
    spec = StudySpec(name="tiny", space=str(space), samples=8, max_iters=12, grace=3, reduction=2.0,
                     concurrency=2, fixed=dict(REPORT_TINY), seed=0)
    run_study(spec, root, progress=False, say=lambda _: None)
    return root / "tiny"


ABLATE_ARGS = ["--seeds", "2", "--quiet"]  # at the study's budget: 12 iterations


@pytest.fixture(scope="session")
def ablated_study(small_study, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the small study after `semiseg-study ablate tiny --seeds 2` (and what it printed).

    Its space groups bank_size and temperature as "memory bank" and leaves lr in no group (a group
    of its own), so the plan has two groups, and the winner without one is the paper point with the other.
    """
    import contextlib
    import io
    import shutil

    from study.cli import main

    root = tmp_path_factory.mktemp("ablated")
    shutil.copytree(small_study, root / "tiny", ignore=shutil.ignore_patterns("ablate", "retrain"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ablate", "tiny", "--dir", str(root), *ABLATE_ARGS]) == 0
    return root / "tiny", out.getvalue()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the session (real HTTP); yields ``(host:port, make_bucket)``."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is missing (pip install -e '.[test]')")
    import pyarrow.fs as pafs

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    admin = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)

    def make_bucket(name: str) -> str:
        admin.create_dir(name)
        return f"s3://{name}?endpoint_override={endpoint}&scheme=http"

    yield endpoint, make_bucket
    server.stop()
