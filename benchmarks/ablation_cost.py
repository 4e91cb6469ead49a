"""Seconds per training iteration of an ablation's variants, measured alone on one thread, interleaved.

``semiseg-study ablate`` prints each run's cost as it ran, which on a shared machine says more
about the other jobs than about the variant. This times the variants' own configs (from the
study's ablate/ rows) one after another in this process, twice, in steady state (every loss
term active from iteration 10), and prints the median seconds per iteration::

    python benchmarks/ablation_cost.py main [--dir studies] [--iterations 110] [--passes 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from study.records import stored_config
from study.run import study_folder
from study.store import ResultStore
from trainer.fit import fit

VARIANTS = ("paper point", "winner", "winner without memory bank and contrastive loss",
            "paper point with memory bank and contrastive loss", "paper point with pseudo-labels and teacher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--dir", default="studies")
    parser.add_argument("--iterations", type=int, default=110)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args(argv)
    rows = ResultStore(study_folder(args.dir, args.name), args.name).ablate().to_pylist()
    configs = {}
    for name in args.variants:
        row = next((r for r in rows if r["variant"] == name), None)
        if row is None:
            raise SystemExit(f"no ablation run of {name!r} in study {args.name!r}: run `semiseg-study ablate` first")
        configs[name] = stored_config(row).replace(iterations=args.iterations, eval_every=args.iterations,
                                                   ramp_up=10, bank_lead=5, threads=1, eval_test=False)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.passes):
        for name, cfg in configs.items():
            times[name].append(fit(cfg).last.train_seconds / args.iterations)
    print("| variant | s/it (one thread, median of passes) |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
