"""A study on a two-node Ray cluster (loopback) whose worker node is removed mid-study.

Run by test_node_loss.py in its own process (it starts and stops its own Ray). Prints one
JSON line: the worker node's id, when it was removed, and Tune's results per trial.
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

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import tiny_overrides  # noqa: E402
from study.run import run_study  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from study.store import ResultStore  # noqa: E402


def main(root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    worker_id = worker.node_id[:8]
    try:
        fixed = tiny_overrides(eval_every=6, ramp_up=2, bank_lead=1)
        fixed.pop("iterations")
        spec = StudySpec(name="nodes", space="contrastive", samples=6, max_iters=60, grace=6, scheduler="fifo",
                         concurrency=4, keep_checkpoints=0, fixed=fixed)
        errors: list[BaseException] = []

        def study() -> None:
            try:
                run_study(spec, Path(root), progress=False, say=lambda _: None)
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)

        thread = threading.Thread(target=study)
        thread.start()
        store, removed = ResultStore(Path(root) / "nodes", "nodes"), None
        deadline = time.monotonic() + 240
        while removed is None and thread.is_alive() and time.monotonic() < deadline:
            if (Path(root) / "nodes" / "results" / "reports").is_dir():
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
        for path in (Path(root) / "nodes" / "tune").rglob("result.json"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for r in rows:
                results.setdefault(r["trial_id"], []).append([r["iteration"], r["node"], r["timestamp"]])
        print(json.dumps({"worker": worker_id, "removed": removed, "results": results}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
