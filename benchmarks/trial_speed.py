"""The default digits trial, old code against new: seconds per iteration, interleaved in one run.

Each round trains the default study's trial (the paper point of the ``default`` space with the
study's fixed values: 900 iterations, one thread, an evaluation every 100) once with an older
commit and once with a newer one (HEAD by default), each checked out in a temporary git worktree
(so the tree can change while it runs) and run as its own
``semiseg-study train`` process with its own defaults (the config file leaves out the fast-path
switches, so each side takes what it does by default). Rounds alternate which side goes first,
so a slow minute of a shared machine hits both alike. Before the rounds, each side runs one
untimed iteration (it builds the digits classifier cache, once per machine).

    python benchmarks/trial_speed.py                       # HEAD against 01bc394 (fp32, eager), 3 rounds
    python benchmarks/trial_speed.py --old HEAD~3 --new HEAD --rounds 2 --set iterations=300

Every finished run is appended to ``benchmarks/results/trial_speed.jsonl`` (``--results``), so an
interrupted benchmark keeps what it measured; the table is made from this run's rows only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from study.spec import StudySpec  # noqa: E402
from trainer.config import parse_assignment  # noqa: E402

OLD = "01bc394"  # main before the fast path became the default: fp32, contiguous, eager
SWITCHES = ("amp", "channels_last", "compile")  # each side's own defaults


def trial_config(assignments: list[str]) -> dict:
    """The paper point of the default study's space, as its trial trains it, minus the switches."""
    cfg = StudySpec(name="trial-speed").paper_config()
    cfg = cfg.replace(**dict(parse_assignment(a) for a in assignments))
    return {k: v for k, v in cfg.to_dict().items() if k not in SWITCHES}


def train(tree: Path, config: dict, folder: Path) -> dict:
    """One ``semiseg-study train`` of ``config`` with the code of ``tree``: its timings."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "study", "train", "--config", str(folder / "config.json"),
                           "--out", str(folder / "run")], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"train with {tree} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    final = json.loads((folder / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return {"iterations": final["iteration"], "train_seconds": final["train_seconds"], "process_seconds": wall,
            "val_miou": final["val_miou"], "precision": final.get("precision", "fp32"),
            "channels_last": final.get("channels_last", False), "last_line": done.stdout.strip().splitlines()[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default=OLD, help="the commit to compare with (default %(default)s)")
    parser.add_argument("--new", default="HEAD", help="the commit to measure (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="assignments", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "trial_speed.jsonl")
    args = parser.parse_args(argv)
    config = trial_config(args.assignments)
    commits = {side: subprocess.run(["git", "rev-parse", "--short", commit], cwd=REPO, capture_output=True,
                                    text=True, check=True).stdout.strip()
               for side, commit in (("old", args.old), ("new", args.new))}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="trial-speed-") as scratch:
        sides = {side: (Path(scratch) / side, commit) for side, commit in commits.items()}
        try:
            for tree, commit in sides.values():
                subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True,
                               capture_output=True)
            for side, (tree, _) in sides.items():  # untimed: the classifier cache, imports, file caches
                train(tree, {**config, "iterations": 1, "eval_every": 1}, Path(scratch) / f"warm-{side}")
            for round_ in range(args.rounds):
                order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
                for side in order:
                    tree, commit = sides[side]
                    measured = train(tree, config, Path(scratch) / f"{side}-{round_}")
                    row = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "side": side,
                           "commit": commit, "round": round_, **measured}
                    rows.append(row)
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    with args.results.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"round {round_ + 1}/{args.rounds} {side} ({commit}): "
                          f"{1000 * row['train_seconds'] / row['iterations']:.1f} ms/it, {row['last_line']}",
                          file=sys.stderr, flush=True)
        finally:
            for tree, _ in sides.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    def median(side: str, key: str) -> float:
        return statistics.median(r[key] / r["iterations"] for r in rows if r["side"] == side)

    lines = ["| code | fast path | train ms/it (median) | process s/it (median) | val mIoU |", "|---|---|---:|---:|---:|"]
    for side in ("old", "new"):
        mine = [r for r in rows if r["side"] == side]
        if not mine:
            continue
        path = f"{mine[0]['precision']}{' + channels-last' if mine[0]['channels_last'] else ''}"
        scores = ", ".join(f"{100 * r['val_miou']:.1f}" for r in mine)
        lines.append(f"| {side} ({mine[0]['commit']}) | {path} | {1000 * median(side, 'train_seconds'):.1f} | "
                     f"{median(side, 'process_seconds'):.3f} | {scores} |")
    if {r["side"] for r in rows} == {"old", "new"}:
        lines.append(f"\nnew against old: {median('old', 'train_seconds') / median('new', 'train_seconds'):.2f}x "
                     f"per training iteration, {median('old', 'process_seconds') / median('new', 'process_seconds'):.2f}x "
                     "per iteration of the whole process")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
