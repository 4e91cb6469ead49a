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

A study whose own curves are in the table (``benchmarks/curves.py``'s collection studies) is
replayed on a table that holds its answers: say so when you cite it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from study.location import as_location
from study.report.sweep import best_against_spent
from study.simulate import CurveTable, method_from_flags
from study.simulate.efficiency import anytime_band, repeat, step_at
from study.spec import read_study_json
from study.store import ResultStore
from trainer.atomic import write_text_atomic

TABLE = Path(__file__).parent / "data" / "digits_curves.parquet"
BAND = (0.10, 0.90)
GRID = 200


def real_anytime(folder: str, axis: str) -> tuple[list[float], list[float]]:
    """A real study's (cumulative compute, best val mIoU so far) at each of its reports; a trial's compute
    is its latest ``iteration`` or ``time_total_s``."""
    location = as_location(folder)
    reports = ResultStore(location, read_study_json(location).name).reports().to_pylist()
    key = "iteration" if axis == "iterations" else "time_total_s"
    _, xs, ys = best_against_spent(reports, lambda r: float(r[key] or 0.0))
    return xs, ys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", help="real studies' folders or URIs")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--curves", choices=CurveTable.MODELS, default="surrogate")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--axis", choices=("iterations", "seconds"), default="iterations", help="how compute is counted")
    parser.add_argument("-o", "--out", type=Path, default=TABLE.with_name("simulator_validation.html"))
    args = parser.parse_args(argv)

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = CurveTable.load(args.table, args.curves)
    startup = float(json.loads(pq.read_schema(args.table).metadata[b"semiseg_provenance"]).get("startup_s", 0.0))
    fig = make_subplots(rows=1, cols=len(args.studies), subplot_titles=[Path(s).name for s in args.studies],
                        shared_yaxes=True)
    print(f"| study | method | trials | workers | compute | inside the {int(100 * BAND[0])}-{int(100 * BAND[1])}% band "
          "| below | above | final best: real, simulated median |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for col, folder in enumerate(args.studies, start=1):
        spec = read_study_json(as_location(folder))
        method = method_from_flags(spec.searcher, spec.scheduler, grace=spec.grace, reduction=spec.reduction)
        workers = spec.concurrency or 2
        xs, ys = real_anytime(folder, args.axis)
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
        print(f"| {Path(folder).name} | {method.name} | {spec.samples} | {workers} | {total} "
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
    write_text_atomic(args.out, fig.to_html(include_plotlyjs=True, full_html=True))
    print(f"picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
