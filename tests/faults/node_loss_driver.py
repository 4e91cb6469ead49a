"""A study on a two-node Ray cluster (loopback) whose worker node is removed mid-study.

The study lives in object storage (moto's S3 server on 127.0.0.1, in this process), so the
trials of the removed node can only continue from checkpoints that Tune uploaded there.
Run by test_node_loss.py in its own process (it starts and stops its own Ray and S3). Prints
one JSON line: the worker node's id, when it was removed, Tune's results per trial, and the
study's trials (with their configs) and report parts as written (the study runs without the
end-of-run compaction, and the parts are read raw: a row written twice shows).
"""

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).parents[1]))

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import tiny_overrides  # noqa: E402  (also sets the S3 test credentials, which the nodes inherit)
from raw_parts import SAME_BITS, raw_rows  # noqa: E402
from study.records import stored_config  # noqa: E402
from study.location import parse  # noqa: E402
from study.run import run_study  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from study.store import ResultStore  # noqa: E402


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
    s3.create_dir("nodes")
    root = f"s3://nodes/studies?endpoint_override={host}:{port}&scheme=http"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    worker_id = worker.node_id[:8]
    try:
        fixed = tiny_overrides(eval_every=6, ramp_up=2, bank_lead=1)
        fixed.pop("iterations")
        spec = StudySpec(name="nodes", space="contrastive", samples=6, max_iters=60, grace=6, scheduler="fifo",
                         concurrency=4, keep_checkpoints=0, checkpoint_every=0, fixed=fixed)
        errors: list[BaseException] = []

        def study() -> None:
            try:
                run_study(spec, root, progress=False, say=lambda _: None, compact=False)
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)

        thread = threading.Thread(target=study)
        thread.start()
        folder = parse(root) / "nodes"
        store, removed = ResultStore(folder, "nodes"), None
        deadline = time.monotonic() + 240
        while removed is None and thread.is_alive() and time.monotonic() < deadline:
            if store.reports_dir.is_dir():
                there = Counter(r["trial_id"] for r in store.reports().to_pylist() if worker_id in r["node"])
                # A trial there has reported twice: Tune asks for its next result only once the first
                # result's checkpoint is registered, so that trial has one to resume from.
                if there and max(there.values()) >= 2:
                    cluster.remove_node(worker)
                    removed = time.time()
            time.sleep(0.05)
        thread.join(timeout=600)
        if errors:
            raise errors[0]
        results = {}
        for name in (folder / "tune").fs.get_file_info(pafs.FileSelector((folder / "tune").fs_path, recursive=True)):
            if not name.path.endswith("/result.json"):
                continue
            rows = [json.loads(line) for line in s3.open_input_stream(name.path).read().decode().splitlines()]
            for r in rows:
                results.setdefault(r["trial_id"], []).append({k: r.get(k) for k in ("iteration", "node", "timestamp",
                                                                                  *SAME_BITS)})
        # The server goes with this process: what the test checks of the store travels in the JSON.
        trials = [{**{k: t[k] for k in ("trial_id", "status", "retries", "node")}, "config": stored_config(t).to_dict()}
                  for t in raw_rows(folder, "trials")]
        reports = [{k: r[k] for k in ("trial_id", "iteration", "node", *SAME_BITS)} for r in raw_rows(folder)]
        checkpoints = [i.path for i in s3.get_file_info(pafs.FileSelector("nodes/studies/nodes/tune", recursive=True))
                       if i.path.endswith("/trainer.pt")]
        print(json.dumps({"worker": worker_id, "removed": removed, "results": results, "trials": trials,
                          "reports": reports, "checkpoints": len(checkpoints)}))
    finally:
        ray.shutdown()
        cluster.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
