"""A Ray worker node that joins a head at GCS_ADDRESS, for isolated_driver.py.

Started under ``unshare -m --propagation private`` with an empty tmpfs mounted over the study
folder: a machine without the driver's disk. ``ray start`` refuses a second node while
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so it joins as ``ray.cluster_utils.Cluster.add_node`` does.
It runs until it is killed (by the id of the process its driver started).
"""

import os
import sys
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from ray._private.node import Node  # noqa: E402
from ray._private.parameter import RayParams  # noqa: E402


def main(gcs_address: str, cpus: int) -> None:
    params = RayParams(gcs_address=gcs_address, node_ip_address="127.0.0.1", num_cpus=cpus, num_gpus=0,
                       object_store_memory=150 * 1024 * 1024, min_worker_port=0, max_worker_port=0,
                       include_log_monitor=False, node_manager_port=0, resources={"isolated": 1})
    params.dashboard_agent_listen_port = None  # a free one: the head's agent holds the default
    Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("node started", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
