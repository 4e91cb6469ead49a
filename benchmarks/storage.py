"""What a study in object storage costs: the same tiny study with a local --dir and with s3://.

The S3 server is moto's (the test extras, in its own process) on 127.0.0.1, reached by pyarrow's real S3 client,
so the figures are an S3 protocol's overhead without a network's latency. One Ray for both
studies (started first, so that neither pays its start-up).

    PYTHONPATH=. python benchmarks/storage.py     # 16 trials each, 3 rounds, 200 store parts
    python benchmarks/storage.py --trials 8 --rounds 1 --parts 50

Prints a Markdown table: the study's wall time (the two studies run by turns, ``--rounds`` times,
each side first in every other round:
from run to run a study's time moves by 10-20%, so one pair is not enough to see 10%), then the
store alone: parts written per second (one report row each, as the driver writes them), and
whole-table reads per second.
Then the overheads paired by round (each round's S3 study against its local one), with the 95%
bootstrap interval of their median (with few rounds it is wide: it says what a run can show), and the
first S3 study's requests by object, counted from moto's request log (the driver's, the
trials' and Tune's own), so that a change can be measured in requests as well as seconds.
The log is left in the temp folder (its path is the first line printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

TINY = {"image_size": 32, "digits_scenes": 64, "digits_eval_scenes": 16, "batch_labeled": 4, "batch_unlabeled": 4,
        "eval_every": 3, "pretrained": "none", "ramp_up": 2, "bank_lead": 1, "confidence_threshold": 0.0,
        "labeled_fraction": 0.25}  # no bank_size: the contrastive space samples it for every trial


def study_seconds(root: str, name: str, trials: int) -> tuple[float, int]:
    """The study's wall seconds, and the iterations its trials trained (ASHA stops trials by the
    order in which they reach a rung, so two runs of one seeded study may train different totals)."""
    from study.location import parse
    from study.run import run_study
    from study.spec import StudySpec
    from study.store import ResultStore

    spec = StudySpec(name=name, space="contrastive", samples=trials, max_iters=12, grace=3, reduction=2.0,
                     concurrency=2, fixed=dict(TINY), seed=0)
    started = time.monotonic()
    run_study(spec, root, progress=False, say=lambda _: None)
    wall = time.monotonic() - started
    return wall, sum(ResultStore(parse(root) / name, name).trials().column("iterations").to_pylist())


def store_rates(root: str, parts: int) -> tuple[float, float]:
    """(parts written per second, whole reports table read per second)."""
    from study.location import parse
    from study.store import ResultStore

    store = ResultStore(parse(root) / "store-bench", "store-bench")
    row = {"trial_id": "t", "time_total_s": 1.0, "timestamp": dt.datetime.now(dt.timezone.utc), "val_miou": 0.5,
           "iou": [0.5] * 11, "bank_fill": [1.0] * 11, "node": "127.0.0.1", "config.lr": 0.01}
    started = time.monotonic()
    for i in range(parts):
        store.append_reports([{**row, "iteration": i}])
    written = parts / (time.monotonic() - started)
    reads, started = 0, time.monotonic()
    while time.monotonic() - started < 3 or reads < 3:
        assert ResultStore(store.study_dir, "store-bench").reports().num_rows == parts
        reads += 1
    return written, reads / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of studies, local and s3 by turns")
    parser.add_argument("--parts", type=int, default=200)
    args = parser.parse_args()

    import pyarrow.fs as pafs
    import ray

    # Its own process, as a real object store is: in the driver's, it would compete for the GIL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # its request lines
    print(f"moto's request log: {log.name}")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir("bench")
    roots = {"local": tempfile.mkdtemp(prefix="storage-bench-"),
             "s3 (moto, loopback)": f"s3://bench/studies?endpoint_override={endpoint}&scheme=http"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        study_seconds(roots["local"], "warm-up", 2)  # scenes composed, workers started: for neither to pay
        runs: dict[str, list[tuple[float, int]]] = {label: [] for label in roots}  # (wall s, iterations)
        requests: Counter = Counter()
        sides = list(roots.items())
        for round_ in range(args.rounds):
            # Each side goes first in every other round: a study that follows the other may find
            # Ray's workers warmer or the machine busier, and neither side should always get that.
            for label, root in sides if round_ % 2 == 0 else sides[::-1]:
                seen = Path(log.name).stat().st_size
                runs[label].append(study_seconds(root, f"bench{round_}", args.trials))
                if root.startswith("s3://") and not requests:
                    requests = request_kinds(Path(log.name).read_bytes()[seen:].decode(errors="replace"))
        rows = [(label, runs[label], *store_rates(root, args.parts)) for label, root in roots.items()]
    finally:
        ray.shutdown()
        server.kill()  # the server this script started, by its own handle
        server.wait(timeout=30)
    def per_100(runs: list[tuple[float, int]]) -> float:
        return statistics.median(100 * wall / iterations for wall, iterations in runs)

    base = statistics.median(wall for wall, _ in rows[0][1])
    base_100 = per_100(rows[0][1])
    print(f"| --dir | study wall s ({args.trials} trials), each round (iterations trained) | median | overhead | "
          f"s per 100 iterations, median | overhead | parts written / s | table reads / s ({args.parts} parts) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, runs, written, read in rows:
        median, median_100 = statistics.median(wall for wall, _ in runs), per_100(runs)
        print(f"| {label} | {', '.join(f'{w:.1f} ({n})' for w, n in runs)} | {median:.1f} | "
              f"{100 * (median - base) / base:+.1f}% | {median_100:.2f} | {100 * (median_100 - base_100) / base_100:+.1f}% "
              f"| {written:.0f} | {read:.1f} |")
    # The same round's two studies, paired: a machine that is slower for a while slows both.
    (_, local_runs, *_), (_, s3_runs, *_) = rows
    walls = [s3[0] / local[0] for local, s3 in zip(local_runs, s3_runs)]
    per_100 = [(s3[0] / s3[1]) / (local[0] / local[1]) for local, s3 in zip(local_runs, s3_runs)]
    print("\nPaired by round (the median of each round's s3 / local ratio, and its 95% bootstrap interval): "
          + ", ".join(f"{what} {100 * (statistics.median(ratios) - 1):+.1f}% ({interval(ratios)})"
                      for what, ratios in (("wall", walls), ("per 100 iterations", per_100))))
    print(f"\nThe first S3 study's requests ({sum(requests.values())}, {sum(requests.values()) / args.trials:.0f} a trial):\n")
    print("| object | requests | by method |")
    print("|---|---:|---|")
    kinds: dict[str, Counter] = {}
    for (method, kind), count in requests.items():
        kinds.setdefault(kind, Counter())[method] += count
    for kind, methods in sorted(kinds.items(), key=lambda item: -sum(item[1].values())):
        print(f"| {kind} | {sum(methods.values())} | {', '.join(f'{m} {n}' for m, n in methods.most_common())} |")


REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (/\S*) HTTP')


def interval(ratios: list[float], resamples: int = 5000) -> str:
    """The 95% bootstrap interval of the median of ``ratios`` (seeded), as overheads: whether a goal
    is inside what the rounds allow, not only whether one run's median is."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    low, high = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
    return f"{100 * (low - 1):+.1f}% to {100 * (high - 1):+.1f}%"


def request_kinds(lines: str) -> Counter:
    """moto's request log, counted by method and by the kind of object asked for."""
    counts: Counter = Counter()
    for method, path in REQUEST.findall(lines):
        counts[method, object_kind(path)] += 1
    return counts


def object_kind(path: str) -> str:
    bare = path.split("?")[0]
    key = bare.split("/", 2)[2] if bare.count("/") >= 2 else ""
    name = key.rstrip("/").rsplit("/", 1)[-1]
    if "list-type" in path:
        return "listings (parts listed, folders looked up)"
    if "delete" in path and not key:
        return "batch deletes"
    if not key:
        return "the bucket (looked up before a folder is made)"
    if key.endswith("/"):
        return "folder markers"
    if "/reports/" in key:
        return "report parts"
    if "/checkpoint_" in key:
        return "trial checkpoints"
    if name.startswith("run_trial_"):
        return "trial folders (looked up)"
    for prefix in ("trials.parquet", "asha_rungs.json", "optuna.db", "study.json", "result.json", "params",
                   "experiment_state", "searcher-state", "search_gen_state", "tuner.pkl", "trainable.pkl",
                   ".validate_storage_marker"):
        if name.startswith(prefix):
            return prefix
    return f"other ({name[:40]})"


if __name__ == "__main__":
    main()
