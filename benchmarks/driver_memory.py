"""Driver memory over a long study: does the driver's RSS grow with the number of trials?

Ray has an open issue about the Tune driver's memory growing with trial count. This runs
one study of many tiny trials (a few iterations each, so the driver's bookkeeping, not the
training, is what is measured) and samples the driver process's resident memory as
trials end.

    python benchmarks/driver_memory.py                 # 200 trials
    python benchmarks/driver_memory.py --trials 50 --every 10

Prints a Markdown table: trials ended, driver RSS (MiB), growth since the first sample.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

TINY = {"image_size": 32, "digits_scenes": 32, "digits_eval_scenes": 8, "batch_labeled": 2, "batch_unlabeled": 2,
        "eval_every": 1, "pretrained": "none", "ramp_up": 1, "bank_lead": 1, "confidence_threshold": 0.0,
        "labeled_fraction": 0.25, "proj_dim": 8}


def rss_mib() -> float:
    """This process's resident memory (Linux: /proc; psutil is not a dependency)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--every", type=int, default=25, help="a table row every this many trials ended")
    parser.add_argument("--searcher", choices=("tpe", "random"), default="tpe")
    args = parser.parse_args()

    from study.run import run_study
    from study.spec import StudySpec
    from study.store import ResultStore

    root = Path(tempfile.mkdtemp(prefix="driver-memory-"))
    spec = StudySpec(name="memory", space="contrastive", samples=args.trials, max_iters=2, grace=1,
                     scheduler="fifo", searcher=args.searcher, fixed=TINY)
    samples: list[tuple[int, float, float]] = []  # (trials ended, RSS MiB, seconds)
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        folder = root / "memory"
        while not done.wait(1.0):
            ended = 0
            if (folder / "results" / "trials").is_dir():
                try:
                    statuses = ResultStore(folder, "memory").trials().column("status").to_pylist()
                    ended = sum(s != "running" for s in statuses)
                except Exception:  # noqa: BLE001 - the file is being replaced: try again next second
                    continue
            samples.append((ended, rss_mib(), time.monotonic() - started))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    run_study(spec, root, progress=False, say=lambda _: None)
    done.set()
    thread.join()
    samples.append((args.trials, rss_mib(), time.monotonic() - started))

    rows, next_mark = [], 0
    for ended, rss, seconds in samples:
        if ended >= next_mark:
            rows.append((ended, rss, seconds))
            next_mark = (ended // args.every + 1) * args.every
    # The baseline is the first sample once trials run (Ray, torch and the first trial loaded).
    base = next((rss for ended, rss, _ in rows if ended >= args.every), rows[0][1])
    print(f"driver memory over a study of {args.trials} tiny trials ({args.searcher}, FIFO, 2 at a time)\n")
    print("| trials ended | driver RSS (MiB) | change since trial ~" + str(args.every) + " | elapsed (s) |")
    print("|---:|---:|---:|---:|")
    for ended, rss, seconds in rows:
        print(f"| {ended} | {rss:.0f} | {rss - base:+.0f} | {seconds:.0f} |")
    peak = max(rss for _, rss, _ in samples)
    per_trial = (rows[-1][1] - base) / max(1, rows[-1][0] - args.every)
    print(f"\npeak {peak:.0f} MiB; growth after trial {args.every}: {per_trial * 1024:.0f} KiB per trial")


if __name__ == "__main__":
    main()
