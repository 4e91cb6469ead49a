"""Does bf16 autocast change what a digits run learns? fp32 against bf16, paired by seed, val and test mIoU.

Two configs: the digits preset (``semiseg-study train``'s default, 2000 iterations) and the
default study's winner (the best full-budget config of the learning-curve table,
``benchmarks/data/digits_curves.parquet``, at the study's 900 iterations). Each runs on the
same seeds in fp32 and under bf16 autocast (``amp=true``), one thread. Every finished run is
appended to a JSON-lines file at once, so an interrupted run resumes where it stopped::

    python benchmarks/precision_quality.py                 # 2 configs x 3 seeds x 2 precisions
    python benchmarks/precision_quality.py --shard 1/2     # every second run: two processes share the work
    python benchmarks/precision_quality.py --table         # the paired table from what is stored
    python benchmarks/precision_quality.py --results F     # another file of runs (another version of the code)

A difference larger than the seed spread is a finding, whichever way it goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from study.spec import StudySpec
from trainer.config import TrainConfig, preset
from trainer.fit import fit

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "precision_quality.jsonl"
CURVES = HERE / "data" / "digits_curves.parquet"
PRECISIONS = {"fp32": False, "bf16": True}


def winner_params() -> dict[str, Any]:
    """The params of the curve table's best config that trained its full budget (highest final val)."""
    finals: dict[tuple[str, str], dict[str, Any]] = {}
    for row in pq.read_table(CURVES).to_pylist():
        key = (row["study"], row["trial_id"])
        if row["full_budget"] and row["status"] == "finished" and row["iteration"] >= finals.get(key, row)["iteration"]:
            finals[key] = row
    return json.loads(max(finals.values(), key=lambda r: r["val_miou"])["params"])


def configs() -> dict[str, TrainConfig]:
    spec = StudySpec(name="precision")
    return {"digits preset": preset("digits").replace(threads=1).validate(),
            "study winner": spec.trial_config(winner_params())}


def plan(seeds: list[int]) -> list[tuple[str, int, str]]:
    return [(name, seed, precision) for name in configs() for seed in seeds for precision in PRECISIONS]


def stored(results: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["config"], r["seed"], r["precision"]): r for r in rows}


def run(seeds: list[int], shard: tuple[int, int], results: Path) -> None:
    done, cfgs = stored(results), configs()
    todo = [key for i, key in enumerate(plan(seeds)) if i % shard[1] == shard[0] - 1 and key not in done]
    for name, seed, precision in todo:
        cfg = cfgs[name].replace(seed=seed, amp=PRECISIONS[precision])
        result = fit(cfg, final_test=True)
        row = {"config": name, "seed": seed, "precision": precision, "val_miou": result.val_miou,
               "test_miou": result.test_miou, "seconds_per_iteration": result.train_seconds / cfg.iterations,
               "iterations": cfg.iterations}
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as out:  # one line per finished run: a kill loses only the run in progress
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def table(seeds: list[int], results: Path) -> str:
    done = stored(results)
    lines = ["| config | split | fp32 | bf16 | bf16 - fp32 (paired) | seeds | fp32 s/it | bf16 s/it |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in configs():
        pairs = [(done[(name, s, "fp32")], done[(name, s, "bf16")]) for s in seeds
                 if (name, s, "fp32") in done and (name, s, "bf16") in done]
        if not pairs:
            continue
        for split in ("val_miou", "test_miou"):
            a, b = [100 * p[0][split] for p in pairs], [100 * p[1][split] for p in pairs]
            diff = [y - x for x, y in zip(a, b)]
            lines.append(f"| {name} | {split[:-5]} | {_mean_sd(a)} | {_mean_sd(b)} | {_mean_sd(diff, sign=True)} | "
                         f"{len(pairs)} | {statistics.mean(p[0]['seconds_per_iteration'] for p in pairs):.3f} | "
                         f"{statistics.mean(p[1]['seconds_per_iteration'] for p in pairs):.3f} |")
    return "\n".join(lines)


def _mean_sd(values: list[float], sign: bool = False) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if sign else ''}.1f} ± {spread:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shard", default="1/1", help="K/N: every N-th run of the plan, from the K-th")
    parser.add_argument("--table", action="store_true", help="print the table of stored runs and exit")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"the JSON-lines file of runs (default {RESULTS.relative_to(HERE.parent)}): "
                             "one per version of the code compared")
    args = parser.parse_args(argv)
    if not args.table:
        k, n = (int(x) for x in args.shard.split("/"))
        run(args.seeds, (k, n), args.results)
    print(table(args.seeds, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
