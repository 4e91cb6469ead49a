"""The learning-curve table of the digits trainer: the measured ground truth of the search benchmarks.

Full-budget curves (900 iterations, val and test mIoU every 100) of configurations drawn at
random from the default space, collected with the project's own study machinery: random
search, FIFO (no trial is stopped), ``eval_test=true`` so that each evaluation also scores
the test split. Both studies resume with ``semiseg-study run --resume NAME``::

    semiseg-study run --name digits-curves --searcher random --scheduler fifo --samples 120 \\
        --seed 13 --set eval_test=true
    python benchmarks/curves.py points digits-curves --count 24 -o studies/seed1-points.json
    semiseg-study run --name digits-curves-seed1 --searcher random --scheduler fifo --samples 24 \\
        --points studies/seed1-points.json --set eval_test=true seed=1
    python benchmarks/curves.py table digits-curves digits-curves-seed1    # -> benchmarks/data/

A study folder may be gone while its rows are in the committed table (the first 83 curves'
study was): ``table --merge`` keeps the table's rows of studies not named, and their
provenance, and adds those named; ``points --from-table`` draws the second seed's configs
from the table instead of a study::

    semiseg-study run --name digits-curves-2 --searcher random --scheduler fifo --samples 38 \\
        --seed 14 --set eval_test=true     # the paper point (seed 0 again), then 37 new
    python benchmarks/curves.py table --merge digits-curves-2     # 12 of them finished before it was cut
    semiseg-study run --name digits-curves-3 --searcher random --scheduler fifo --samples 27 \\
        --seed 15 --set eval_test=true     # a new seed: seed 14 would draw the same configs again
    python benchmarks/curves.py table --merge digits-curves-3
    python benchmarks/curves.py points --from-table --count 24 -o studies/seed1-points.json
    semiseg-study run --name digits-curves-seed1 --searcher random --scheduler fifo --samples 25 \\
        --points studies/seed1-points.json --set eval_test=true seed=1     # the paper point, then the 24
    python benchmarks/curves.py table --merge digits-curves-seed1

The 24 seed-1 configs drawn from the 122-curve table are kept in ``benchmarks/data/seed1_points.json``
(``studies/`` does not outlive a machine): a later run passes that file to ``--points``.

The table has one row per (study, trial, evaluation); a configuration is named by
``config_id`` (a hash of its sampled params), so the two seeds of one configuration pair up.
Its Parquet metadata, and the JSON file beside it, say how it was made: the commands, the
studies' specs, the git commit and the library versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from study.records import FINISHED
from study.simulate import measured_startup, study_curves
from study.simulate.table import config_id
from study.store import ResultStore
from trainer.atomic import atomic_write, write_text_atomic

OUT = Path(__file__).parent / "data" / "digits_curves.parquet"
COMMANDS = [line.strip() for part in __doc__.split("::")[1:3] for line in part.split("\n\n")[1].splitlines()]


def write_table(names: list[str], root: Path, out: Path, merge: bool = False) -> pa.Table:
    from study.spec import environment

    rows = [row for name in names for row in study_curves(root / name)]
    if not rows:
        raise SystemExit(f"no evaluations in {', '.join(names)} under {root}")
    studies = {n: json.loads((root / n / "study.json").read_text()) for n in names}
    startups = {n: measured_startup(root / n) for n in names}
    if merge and out.is_file():
        # Rows and provenance of the studies not named stay as the table holds them.
        kept = pq.read_table(out)
        old = json.loads(kept.schema.metadata[b"semiseg_provenance"])
        kept_rows = [r for r in kept.to_pylist() if r["study"] not in studies]
        rows = kept_rows + rows
        for name, spec in old["studies"].items():
            studies.setdefault(name, spec)
            startups.setdefault(name, old.get("startup_by_study", {}).get(name, old["startup_s"]))
    table = pa.Table.from_pylist(rows)
    # Each study's study.json holds its spec and the commit and versions it ran with.
    provenance = {"commands": COMMANDS, "studies": studies, "table_written_by": environment(),
                  # What a simulated trial pays before it trains: measured on these very studies.
                  "startup_s": statistics.median(startups.values()), "startup_by_study": startups}
    table = table.replace_schema_metadata({b"semiseg_provenance": json.dumps(provenance).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as handle:
        pq.write_table(table, handle, compression="zstd")
    write_text_atomic(out.with_suffix(".json"), json.dumps(provenance, indent=2) + "\n")
    return table


def table_points(table: pa.Table, count: int) -> list[dict]:
    """The params of ``count`` full-budget configs of the table, spread over its range of final val
    mIoU (every k-th by rank), so that the second seed measures the noise of good and bad configs
    alike. The paper point is left out: every study evaluates it first anyway."""
    from search_spaces import get_space

    paper = config_id(json.dumps(get_space("default").paper_point))
    final: dict[str, tuple[int, float, str]] = {}
    for r in table.to_pylist():
        if r["config_id"] == paper:
            continue
        if r["full_budget"] and r["seed"] == 0 and r["iteration"] >= final.get(r["config_id"], (-1,))[0]:
            final[r["config_id"]] = (r["iteration"], r["val_miou"], r["params"])
    ranked = sorted(final.values(), key=lambda f: f[1])
    if len(ranked) < count:
        raise SystemExit(f"the table has {len(ranked)} full curves on seed 0, fewer than --count {count}")
    step = len(ranked) / count
    return [json.loads(ranked[int(i * step)][2]) for i in range(count)]


def summary(table: pa.Table) -> str:
    rows = table.to_pylist()
    full = {(r["study"], r["trial_id"]): r for r in rows if r["full_budget"]}
    by_config: dict[str, set] = {}
    for study, trial in full:
        row = full[(study, trial)]
        by_config.setdefault(row["config_id"], set()).add(row["seed"])
    twice = sum(len(seeds) >= 2 for seeds in by_config.values())
    return (f"{len(rows)} evaluations, {len({(r['study'], r['trial_id']) for r in rows})} trials, "
            f"{len(full)} full curves of {len(by_config)} configurations, {twice} of them on two seeds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="write the table from finished (or growing) studies")
    table.add_argument("names", nargs="+")
    table.add_argument("--dir", type=Path, default=Path("studies"))
    table.add_argument("-o", "--out", type=Path, default=OUT)
    table.add_argument("--merge", action="store_true", help="keep the table's rows of studies not named")
    points = commands.add_parser("points", help="the sampled params of a study's first full trials, "
                                                "for `run --points` (the same configs on another seed)")
    points.add_argument("name", nargs="?")
    points.add_argument("--from-table", action="store_true", help="draw them from the table (--out of `table`)")
    points.add_argument("--table", type=Path, default=OUT)
    points.add_argument("--dir", type=Path, default=Path("studies"))
    points.add_argument("--count", type=int, default=24)
    points.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "table":
        print(summary(write_table(args.names, args.dir, args.out, args.merge)) + f" -> {args.out}")
        return 0
    if args.from_table:
        chosen = table_points(pq.read_table(args.table), args.count)
    elif args.name:
        trials = [t for t in ResultStore(args.dir / args.name, args.name).trials().to_pylist()
                  if t["status"] == FINISHED]
        chosen = [json.loads(t["params"]) for t in sorted(trials, key=lambda t: t["started"])[:args.count]]
    else:
        parser.error("points: name a study, or give --from-table")
    write_text_atomic(args.out, json.dumps(chosen, indent=2) + "\n")
    print(f"{len(chosen)} configs of {args.name or args.table} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
