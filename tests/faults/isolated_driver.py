"""A cluster whose only worker node cannot see the driver's disk (used by test_isolated_node.py).

The head (``ray.cluster_utils.Cluster``) has 0 CPUs, so every trial runs on the worker node,
which isolated_node.py starts in its own mount namespace with an empty tmpfs over the study
folder. With a local ``--dir``, ``run`` must stop at once with one line; with ``s3://`` (moto's
server on 127.0.0.1, in this process) the study must finish on that node, and ``status``,
``report``, ``retrain`` and ``export`` must work from the URI. Prints one JSON line.

"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import LR_BANK_SPACE as SPACE, set_args, study_fixed  # noqa: E402  (also sets the S3 credentials)
from study.cli import main as cli  # noqa: E402

SET = set_args(study_fixed())
STUDY = ["--samples", "3", "--max-iters", "6", "--grace", "3", "--scheduler", "fifo",
         "--quiet", "--set", *SET]


def command(argv):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(argv)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "seconds": time.monotonic() - started}


def main(work: str) -> None:
    work = Path(work)
    local_dir = work / "studies"
    local_dir.mkdir(parents=True)
    (work / "tiny.yaml").write_text(SPACE)
    study_args = ["--space", str(work / "tiny.yaml"), *STUDY]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "%s:%d" % server.get_host_and_port()
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("cluster")
    s3_dir = f"s3://cluster/studies?endpoint_override={endpoint}&scheme=http"

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]))
    script = f"mount -t tmpfs tmpfs {local_dir} && exec {sys.executable} {HERE / 'isolated_node.py'} " \
             f"{cluster.gcs_address} 2"
    node = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            if time.monotonic() > deadline or node.poll() is not None:
                raise SystemExit("the isolated node did not join")
            time.sleep(1)
        address = cluster.address
        result["local"] = command(["run", "--name", "local", "--address", address, "--dir", str(local_dir),
                                   *study_args])
        result["local_left"] = sorted(os.listdir(local_dir))
        result["s3"] = command(["run", "--name", "s3", "--address", address, "--dir", s3_dir, *study_args])
        for name, argv in (("status", ["status", "s3"]), ("report", ["report", "s3"]),
                           ("retrain", ["retrain", "s3", "--top", "1", "--seeds", "1", "--quiet"]),
                           ("export", ["export", "s3", "-o", str(work / "best.json")])):
            result[name] = command([*argv, "--dir", s3_dir])
        from study.location import parse
        from study.store import ResultStore

        store = ResultStore(parse(s3_dir) / "s3", "s3")
        isolated = [n["NodeID"][:8] for n in ray.nodes() if n["Alive"] and "isolated" in n["Resources"]]
        result["isolated_node"] = isolated[0] if isolated else None
        result["trial_nodes"] = sorted({t["node"] for t in store.trials().to_pylist()})
        result["statuses"] = sorted(t["status"] for t in store.trials().to_pylist())
        result["retrain_nodes"] = sorted({r["node"] for r in store.retrain().to_pylist()})
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        os.killpg(node.pid, signal.SIGKILL)  # the node and every Ray process it spawned: its own group
        node.wait(timeout=30)
        cluster.shutdown()
        server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
