"""Does the simulator predict real studies? Each real study against the band of its simulated twins.

For each real study (a folder, or a URI), the same method (searcher, scheduler, grace,
reduction, number of trials, trials at once: from its study.json) is replayed ``--repeats``
times on the learning-curve table. On the compute axis, the real study's best val mIoU so far
should lie inside the simulated 10-90% band for most of its length: printed per study as the
share of the grid inside the band, below it and above it. The picture goes next to the table.

Compute is counted in training iterations by default (every trial's last evaluated
iteration, summed), not seconds: a real study on a machine shared with other work runs each
iteration two or three times slower than the table's studies did, which would shift it
right of its twins for a reason that has nothing to do with the search. ``--axis seconds``
uses the trials' seconds (``time_total_s``), as the simulator's clock counts them.

    python benchmarks/validate_simulator.py studies/main studies/main-2 studies/random-1 ...
    python benchmarks/validate_simulator.py studies/main --curves nearest --repeats 20

Study folders do not outlive the machine they ran on, so the real studies cited in docs/search-efficiency.md
are kept in ``benchmarks/data/real_studies.parquet`` (their reports, with each study's spec
and provenance in the file's metadata): ``--record`` adds studies to it (a study of the same
name is replaced), and with no study named the script validates every recorded one::

    python benchmarks/validate_simulator.py --record studies/real-tpe-1 studies/real-random-1 ...
    python benchmarks/validate_simulator.py            # every recorded study

A study whose own curves are in the table (``benchmarks/curves.py``'s collection studies) is
replayed on a table that holds its answers: say so when you cite it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from study.location import as_location
from study.report.sweep import best_against_spent
from study.simulate import CurveTable, method_from_flags
from study.simulate.efficiency import anytime_band, repeat, step_at
from study.records import REPORTS
from study.spec import StudySpec, read_study_json
from study.store import ResultStore
from trainer.atomic import atomic_write, write_text_atomic

TABLE = Path(__file__).parent / "data" / "digits_curves.parquet"
RECORDED = TABLE.with_name("real_studies.parquet")
BAND = (0.10, 0.90)
GRID = 200
REPORT_COLUMNS = ("trial_id", "timestamp", "iteration", "time_total_s", "val_miou")
META_KEY = b"semiseg_real_studies"


@dataclass(frozen=True)
class RealStudy:
    name: str
    spec: StudySpec
    reports: list[dict[str, Any]]  # REPORT_COLUMNS of every report
    environment: dict[str, Any]    # versions and git commit the study ran with


def from_folder(folder: str) -> RealStudy:
    location = as_location(folder)
    spec = read_study_json(location)
    table = ResultStore(location, spec.name).reports()
    ran_with = json.loads((location / "study.json").read_text()).get("environment", {})
    return RealStudy(spec.name, spec, table.select(list(REPORT_COLUMNS)).to_pylist(), ran_with)


def recorded(path: Path = RECORDED) -> list[RealStudy]:
    """The studies kept in ``path``, in the order they were recorded."""
    if not path.is_file():
        return []
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    rows = table.to_pylist()
    return [RealStudy(name, StudySpec.from_dict(entry["spec"]),
                      [{k: r[k] for k in REPORT_COLUMNS} for r in rows if r["study"] == name], entry["environment"])
            for name, entry in meta.items()]


def record(folders: list[str], path: Path = RECORDED) -> list[str]:
    """Add the studies in ``folders`` to ``path`` (replacing any of the same name); their names."""
    kept = {s.name: s for s in recorded(path)}
    added = [from_folder(folder) for folder in folders]
    kept.update((s.name, s) for s in added)
    meta = {s.name: {"spec": s.spec.to_dict(), "environment": s.environment, "reports": len(s.reports)}
            for s in kept.values()}
    rows = [dict(r, study=s.name) for s in kept.values() for r in s.reports]
    # The store's own column types (study/records.py), so the kept reports read as the study's did.
    schema = pa.schema([("study", pa.string()), *(REPORTS.fields.field(c) for c in REPORT_COLUMNS)],
                       metadata={META_KEY: json.dumps(meta, indent=1).encode()})
    with atomic_write(path) as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)
    return [s.name for s in added]


def real_anytime(study: RealStudy, axis: str) -> tuple[list[float], list[float]]:
    """A real study's (cumulative compute, best val mIoU so far) at each of its reports; a trial's compute
    is its latest ``iteration`` or ``time_total_s``."""
    key = "iteration" if axis == "iterations" else "time_total_s"
    _, xs, ys = best_against_spent(study.reports, lambda r: float(r[key] or 0.0))
    return xs, ys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="*", help="real studies' folders or URIs (none: every recorded study)")
    parser.add_argument("--record", action="store_true",
                        help=f"add the studies named to {RECORDED.name} (replacing one of the same name) and stop")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--curves", choices=CurveTable.MODELS, default="surrogate")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--axis", choices=("iterations", "seconds"), default="iterations", help="how compute is counted")
    parser.add_argument("-o", "--out", type=Path, default=TABLE.with_name("simulator_validation.html"))
    args = parser.parse_args(argv)
    if args.record:
        if not args.studies:
            parser.error("--record: name the study folders to record")
        print(f"recorded {', '.join(record(args.studies))} in {RECORDED}")
        return 0
    studies = [from_folder(f) for f in args.studies] if args.studies else recorded()
    if not studies:
        parser.error(f"no study named and none recorded in {RECORDED}")

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = CurveTable.load(args.table, args.curves)
    startup = float(json.loads(pq.read_schema(args.table).metadata[b"semiseg_provenance"]).get("startup_s", 0.0))
    fig = make_subplots(rows=1, cols=len(studies), subplot_titles=[s.name for s in studies], shared_yaxes=True)
    print(f"| study | method | trials | workers | compute | inside the {int(100 * BAND[0])}-{int(100 * BAND[1])}% band "
          "| below | above | final best: real, simulated median |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for col, study in enumerate(studies, start=1):
        spec = study.spec
        method = method_from_flags(spec.searcher, spec.scheduler, grace=spec.grace, reduction=spec.reduction)
        workers = spec.concurrency or 2
        xs, ys = real_anytime(study, args.axis)
        grid = np.linspace(0.0, xs[-1], GRID)
        sims = repeat(method, table, repeats=args.repeats, workers=workers, startup_s=startup, samples=spec.samples,
                      space=spec.search_space)
        band = anytime_band(sims, grid, "iterations" if args.axis == "iterations" else "compute")
        with np.errstate(all="ignore"):
            low, mid, high = (np.nanquantile(band, q, axis=0) for q in (BAND[0], 0.5, BAND[1]))
        real = step_at(xs, ys, grid)
        known = ~np.isnan(real) & ~np.isnan(low)
        inside = np.mean((real[known] >= low[known]) & (real[known] <= high[known]))
        below, above = np.mean(real[known] < low[known]), np.mean(real[known] > high[known])
        finals = [s.anytime[-1].val for s in sims if s.anytime]
        total = f"{xs[-1] / 1000:.1f}k it" if args.axis == "iterations" else f"{xs[-1] / 3600:.2f} h"
        print(f"| {study.name} | {method.name} | {spec.samples} | {workers} | {total} "
              f"| {100 * inside:.0f}% | {100 * below:.0f}% | {100 * above:.0f}% "
              f"| {100 * ys[-1]:.1f}, {100 * float(np.median(finals)):.1f} |")
        scale = 1000 if args.axis == "iterations" else 3600
        hours = grid / scale
        fig.add_trace(go.Scatter(x=np.r_[hours, hours[::-1]], y=100 * np.r_[high, low[::-1]], fill="toself",
                                 opacity=0.2, line=dict(width=0), name="simulated 10-90%", showlegend=col == 1),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=hours, y=100 * mid, name="simulated median", line=dict(dash="dot"),
                                 showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=np.asarray(xs) / scale, y=100 * np.asarray(ys), line_shape="hv", name="real study",
                                 line=dict(color="black"), showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="compute (thousands of iterations)" if args.axis == "iterations" else
                         "compute (hours of trial time)", row=1, col=col)
    fig.update_yaxes(title_text="best val mIoU so far", row=1, col=1)
    fig.update_layout(title=f"Real studies against {args.repeats} simulated twins each ({args.curves} curves)",
                      template="plotly_white")
    # Committed next to the table: plotly.js from its CDN, not a 5 MB copy in every version of the page.
    write_text_atomic(args.out, fig.to_html(include_plotlyjs="cdn", full_html=True))
    print(f"picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
