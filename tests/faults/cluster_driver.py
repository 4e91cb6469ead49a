"""Run a tiny study on a simulated two-node Ray cluster with logical GPUs (used by test_cluster.py).

Run in its own process: it starts and stops its own Ray. Prints one JSON line with what
the trials saw.
"""

import json
import os
import sys
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).parents[1]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from conftest import tiny_overrides  # noqa: E402
from study.run import run_study  # noqa: E402
from study.spec import StudySpec  # noqa: E402


def main(root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=2)  # logical GPUs: Ray only counts them
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        fixed = tiny_overrides(eval_every=3, ramp_up=2, bank_lead=1)
        fixed.pop("iterations")
        cpu = run_study(StudySpec(name="cpu", space="contrastive", samples=4, max_iters=6, grace=3,
                                  scheduler="fifo", cpus_per_trial=1, fixed=fixed), Path(root), progress=False)
        gpu = run_study(StudySpec(name="gpu", space="contrastive", samples=4, max_iters=6, grace=3,
                                  scheduler="fifo", cpus_per_trial=0.5, gpus_per_trial=0.5, fixed=fixed),
                        Path(root), progress=False)
        seen = {}
        for name in ("cpu", "gpu"):
            rows = []
            for path in (Path(root) / name / "tune").rglob("result.json"):
                rows += [json.loads(line) for line in path.read_text().splitlines()]
            spans = {}
            for r in rows:  # each trial: its GPU ids and the wall-clock span of its reports
                start = r["timestamp"] - r["time_total_s"]
                gpus, low, high = spans.get(r["trial_id"], (r["gpu_ids"], start, r["timestamp"]))
                spans[r["trial_id"]] = (gpus, min(low, start), max(high, r["timestamp"]))
            seen[name] = {"nodes": sorted({r["node"] for r in rows}), "trials": spans}
        print(json.dumps({"cpu_trials": cpu["trials"], "gpu_trials": gpu["trials"], **seen}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
