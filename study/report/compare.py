"""Studies side by side, e.g. TPE + ASHA against random search + FIFO on the same budget."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.records import ERRORED, FINISHED, STOPPED
from study.report.data import StudyData, esc, finite
from study.report.sweep import MIOU, hover, scored, table_height


def _how(data: StudyData) -> str:
    """Searcher and scheduler from study.json when the folder has it (the Parquet does not say)."""
    try:
        spec = json.loads((data.folder / "study.json").read_text())["spec"]
        return f"{spec.get('searcher', '?')} + {spec.get('scheduler', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def compare_best_so_far(studies: list[StudyData]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("against wall time", "against trials ended"))
    for data in studies:
        label = f"{esc(data.name)} ({esc(_how(data))})"
        start = data.start()
        points = sorted((r for r in data.reports if finite(r["val_miou"])), key=lambda r: r["timestamp"])
        best, xs, ys = -math.inf, [], []
        for report in points:
            best = max(best, report["val_miou"])
            xs.append((report["timestamp"] - start).total_seconds() / 60)
            ys.append(100 * best)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=label, legendgroup=label),
                      row=1, col=1)
        ended = sorted((t for t in scored(data) if t.get("ended")), key=lambda t: t["ended"])
        running, counts = -math.inf, []
        for trial in ended:
            running = max(running, trial["best_val_miou"])
            counts.append(100 * running)
        fig.add_trace(go.Scatter(x=list(range(1, len(ended) + 1)), y=counts, mode="lines+markers", line_shape="hv",
                                 name=label, legendgroup=label, showlegend=False,
                                 hovertext=[hover(t) for t in ended], hoverinfo="text+y"), row=1, col=2)
    fig.update_xaxes(title_text="wall time since the first trial started (min)", row=1, col=1)
    fig.update_xaxes(title_text="trials ended", row=1, col=2)
    fig.update_yaxes(title_text=f"best {MIOU} so far")
    fig.update_layout(title="Studies compared: best val mIoU so far")
    return fig


def compare_trials(studies: list[StudyData]) -> go.Figure:
    """Each trial's best val mIoU, one column of dots per study."""
    fig = go.Figure()
    for data in studies:
        trials = scored(data)
        fig.add_trace(go.Box(y=[100 * t["best_val_miou"] for t in trials], name=esc(data.name), boxpoints="all",
                             jitter=0.4, pointpos=0, hovertext=[hover(t) for t in trials], hoverinfo="text+y"))
    fig.update_layout(title="Studies compared: every trial's best val mIoU", yaxis=dict(title=MIOU),
                      xaxis=dict(title="study"))
    return fig


def compare_table(studies: list[StudyData]) -> go.Figure:
    header = ["study", "searcher + scheduler", "trials", "finished", "stopped early", "errored", f"best {MIOU}",
              "wall (min)", "trial time (min)"]
    columns: list[list] = [[] for _ in header]
    for data in studies:
        count = {s: sum(t.get("status") == s for t in data.trials) for s in (FINISHED, STOPPED, ERRORED)}
        ranked = data.ranked
        ends = [t["ended"] for t in data.trials if t.get("ended")]
        wall = (max(ends) - data.start()).total_seconds() / 60 if ends and data.start() else float("nan")
        busy = sum(t.get("wall_seconds") or 0.0 for t in data.trials) / 60
        for column, value in zip(columns, [esc(data.name), esc(_how(data)), len(data.trials), count[FINISHED],
                                           count[STOPPED], count[ERRORED],
                                           f"{100 * ranked[0]['best_val_miou']:.1f}" if ranked else "-",
                                           f"{wall:.1f}", f"{busy:.1f}"]):
            column.append(value)
    fig = go.Figure(go.Table(header=dict(values=[f"<b>{h}</b>" for h in header], align="left"),
                             cells=dict(values=columns, align="left")))
    fig.update_layout(title="Studies compared", height=table_height(len(studies)))
    return fig
