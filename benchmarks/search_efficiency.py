"""How much compute each search method needs to find a top config: simulated studies on the curve table.

Every method (``study.simulate.METHODS``) runs ``--repeats`` simulated studies at each worker
count, each with the same compute budget (``--budget-trials`` full trials of the table's mean
cost). Printed per method: the share of repeats whose best val reaches the target (the table's
95th percentile of final val mIoU), the quartiles of the compute and the median wall time to
get there, and the test mIoU of the config each repeat selects on val. The anytime curves
(median and quartiles of best val against compute) go to a Plotly page next to the table.
A config the table does not hold replays the curve of the table's Gaussian-process surrogate
(``--curves surrogate``, the default; ``--curves nearest`` replays its nearest tabulated
curve); ``--validate`` first prints how well each predicts held-out configs.

    python benchmarks/search_efficiency.py                      # every method but gp+asha and tpe+asha-g100
    python benchmarks/search_efficiency.py --methods gp+asha --repeats 3   # GP: ~15 min a repeat here

Optuna's GP sampler refits its model at every suggestion: one repeat of ``gp+asha`` took 854 s
on this machine's 2 cores, so it is left out of the default run (``--methods`` adds it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from study.simulate import METHODS, CurveTable, run_method, validate
from study.simulate.efficiency import anytime_band, format_summaries, summarize, target_val
from trainer.atomic import write_text_atomic

TABLE = Path(__file__).parent / "data" / "digits_curves.parquet"
# gp+asha refits at every suggestion (about 15 minutes a repeat here); tpe+asha-g100 prices the rule
# that a rung must come after the contrastive loss starts. Both run with --methods.
DEFAULT_METHODS = [name for name in METHODS if name not in ("gp+asha", "tpe+asha-g100")]
BASELINE, DEFAULT = "random+fifo", "tpe+asha"


def _one(args: tuple[str, str, str, int, int, float, float]) -> tuple[str, int, object]:
    table_path, model, method, workers, seed, startup, budget = args
    table = _table(table_path, model)
    return method, workers, run_method(method, table, workers=workers, startup_s=startup, seed=seed, budget_s=budget)


_TABLES: dict[tuple[str, str], CurveTable] = {}


def _table(path: str, model: str) -> CurveTable:
    """One parse (and surrogate fit) per worker process."""
    if (path, model) not in _TABLES:
        _TABLES[(path, model)] = CurveTable.load(path, model)
    return _TABLES[(path, model)]


def figure(results: dict[tuple[str, int], list], budget: float, target: float, out: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    workers = sorted({w for _, w in results})
    fig = make_subplots(rows=1, cols=len(workers), subplot_titles=[f"{w} workers" for w in workers], shared_yaxes=True)
    grid = np.linspace(0, budget, 200)
    colours = dict(zip(METHODS, ("#7f7f7f", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#2ca02c",
                                 "#17becf", "#e377c2", "#bcbd22")))
    for col, w in enumerate(workers, start=1):
        for (method, mw), runs in results.items():
            if mw != w:
                continue
            band = anytime_band(runs, grid)
            with np.errstate(all="ignore"):
                q1, med, q3 = (np.nanquantile(band, q, axis=0) * 100 for q in (0.25, 0.5, 0.75))
            hours = grid / 3600
            colour = colours.get(method, "#000000")
            fig.add_trace(go.Scatter(x=np.r_[hours, hours[::-1]], y=np.r_[q3, q1[::-1]], fill="toself", opacity=0.15,
                                     line=dict(width=0), fillcolor=colour, showlegend=False, hoverinfo="skip",
                                     legendgroup=method), row=1, col=col)
            fig.add_trace(go.Scatter(x=hours, y=med, name=method, line=dict(color=colour), legendgroup=method,
                                     showlegend=col == 1), row=1, col=col)
        fig.add_hline(y=target * 100, line=dict(dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text="compute (hours of trial time)", row=1, col=col)
    fig.update_yaxes(title_text="best val mIoU so far (median, quartile band)", row=1, col=1)
    fig.update_layout(title=f"Anytime performance on the curve table; dotted: the target {target * 100:.1f}",
                      template="plotly_white")
    # Committed next to the table: plotly.js from its CDN, not a 5 MB copy in every version of the page.
    write_text_atomic(out, fig.to_html(include_plotlyjs="cdn", full_html=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--budget-trials", type=float, default=60.0,
                        help="compute per simulated study, in full trials of the table's mean cost")
    parser.add_argument("--jobs", type=int, default=2, help="processes")
    parser.add_argument("--curves", choices=CurveTable.MODELS, default="surrogate",
                        help="how a config the table does not hold gets a curve")
    parser.add_argument("--validate", action="store_true",
                        help="first leave each config out and predict it by each model (about 3 minutes here)")
    parser.add_argument("-o", "--out", type=Path, default=TABLE.with_name("search_efficiency.html"))
    args = parser.parse_args(argv)

    table = CurveTable.load(args.table, args.curves)
    for model in CurveTable.MODELS if args.validate else ():
        fit = validate(table, model)
        print(f"curves by {model}{' (used)' if model == args.curves else ''}: final val of a held-out config off by "
              f"{100 * fit['mae']:.1f} mIoU, Spearman {fit['spearman']:.2f} (the mean of the others: "
              f"{100 * fit['mae_of_mean']:.1f}; seed noise: "
              + ("-" if fit["seed_noise"] is None else f"{100 * fit['seed_noise']:.1f}") + ")")
    provenance = json.loads(pq.read_schema(args.table).metadata[b"semiseg_provenance"])
    startup = float(provenance.get("startup_s", 0.0))
    mean_trial = statistics.fmean(c.final.seconds for c in table.curves) + startup
    budget = args.budget_trials * mean_trial
    target = target_val(table)
    print(f"{len(table.curves)} full curves in {args.table}; a full trial {mean_trial:.0f} s on average "
          f"(start-up {startup:.1f} s); {args.budget_trials:g} of them per simulated study; {args.repeats} repeats")
    tasks = [(str(args.table), args.curves, m, w, seed, startup, budget)
             for m in args.methods for w in args.workers for seed in range(args.repeats)]
    results: dict[tuple[str, int], list] = {(m, w): [] for m in args.methods for w in args.workers}
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, tqdm(total=len(tasks), unit="study") as bar:
        for method, workers, result in pool.map(_one, tasks, chunksize=4):
            results[(method, workers)].append(result)
            bar.update()
    summaries = [summarize(m, results[(m, w)], target) for w in args.workers for m in args.methods]
    print(format_summaries(summaries, target))
    for w in args.workers:
        by = {s.method: s for s in summaries if s.workers == w}
        if BASELINE in by and DEFAULT in by:
            ratio = by[DEFAULT].compute_s[1] / by[BASELINE].compute_s[1]
            print(f"{w} workers: {DEFAULT} needs {ratio:.2f}x the median compute of {BASELINE} to reach the target")
    figure(results, budget, target, args.out)
    print(f"anytime curves: {args.out}; {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
