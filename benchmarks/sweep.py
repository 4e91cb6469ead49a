"""The default study's cost: wall time, trial compute, Ray overhead, iterations, best mIoU.

    python benchmarks/sweep.py                      # runs TPE+ASHA, then random+FIFO on the same wall budget
    python benchmarks/sweep.py --existing studies/main   # only measure a finished study

Overhead = (wall x slots - sum of trial compute) / (wall x slots), where a trial's
compute is Tune's ``time_total_s`` (from the trainable's start to its last report) and
wall is the Tuner's run (Ray start-up excluded). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from study.spec import StudySpec, read_study_json
from study.store import ResultStore


def measure(folder: Path, wall: float | None, slots: int) -> dict:
    spec = read_study_json(folder)
    store = ResultStore(folder, spec.name)
    reports = store.reports().to_pylist()
    trials = store.trials().to_pylist()
    compute = {}
    iterations = {}
    for row in reports:
        compute[row["trial_id"]] = max(compute.get(row["trial_id"], 0.0), row["time_total_s"] or 0.0)
        iterations[row["trial_id"]] = max(iterations.get(row["trial_id"], 0), row["iteration"])
    if wall is None:  # from the reports' timestamps: first report minus its trial time, to the last
        starts = [r["timestamp"].timestamp() - r["time_total_s"] for r in reports]
        wall = max(r["timestamp"].timestamp() for r in reports) - min(starts)
    total_compute = sum(compute.values())
    best = max((t["best_val_miou"] or 0.0) for t in trials) if trials else float("nan")
    return {"study": f"{spec.searcher}+{spec.scheduler}", "trials": len(trials), "wall": wall,
            "compute": total_compute, "overhead": (wall * slots - total_compute) / (wall * slots),
            "iterations": sum(iterations.values()), "budget_iterations": len(trials) * spec.max_iters,
            "best": 100 * best}


def run(spec: StudySpec, root: Path) -> float:
    from study.run import run_study

    started = time.perf_counter()
    run_study(spec, root, replace=True, progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--existing", type=Path, nargs="*", help="study folders to measure, without running")
    parser.add_argument("--root", type=Path, default=Path("studies"))
    parser.add_argument("--slots", type=int, default=2, help="trials that run at once (CPUs / cpus per trial)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    rows = []
    if args.existing:
        rows = [measure(folder, None, args.slots) for folder in args.existing]
    else:
        wall = run(StudySpec(name="sweep-tpe-asha"), args.root)
        rows.append(measure(args.root / "sweep-tpe-asha", None, args.slots))
        # The baseline gets the same wall budget and as many trials as fit in it.
        run(StudySpec(name="sweep-random-fifo", searcher="random", scheduler="fifo", samples=100,
                      time_budget=wall), args.root)
        rows.append(measure(args.root / "sweep-random-fifo", None, args.slots))
    print("| study | trials | wall s | trial compute s | overhead | iterations / trials x max | best val mIoU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['study']} | {r['trials']} | {r['wall']:.0f} | {r['compute']:.0f} | {100 * r['overhead']:.1f}% "
              f"| {r['iterations']} / {r['budget_iterations']} | {r['best']:.1f} |")


if __name__ == "__main__":
    main()
