"""Figures of the trials: how each one learned, when and where it ran, and what the best learned."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.records import ERRORED, STOPPED, stored_params
from study.rung_ranks import MIN_TRIALS, POOR, rung_ranks
from study.report.data import StudyData, esc, finite
from study.report.sweep import MIOU, STATUS_COLOURS, fmt, hover, table_height

TOP = 3  # trials in the per-class and bank-fill figures: more would not fit side by side


def learning_curves(data: StudyData) -> go.Figure:
    """Val mIoU of every trial over its iterations; crosses where a trial was stopped early."""
    fig = go.Figure()
    rows = {t["trial_id"]: t for t in data.trials}
    ends: dict[str, list[tuple[float, float, str]]] = {STOPPED: [], ERRORED: []}
    for trial_id in sorted({r["trial_id"] for r in data.reports}):
        row = rows.get(trial_id, {"trial_id": trial_id})
        points = [r for r in data.reports_of(trial_id) if finite(r["val_miou"])]
        if not points:
            continue
        text = hover(row)
        fig.add_trace(go.Scatter(x=[r["iteration"] for r in points], y=[100 * r["val_miou"] for r in points],
                                 mode="lines", line=dict(width=1.5, color=STATUS_COLOURS.get(row.get("status"))),
                                 name=esc(trial_id), showlegend=False, hovertext=text, hoverinfo="text+x+y"))
        if row.get("status") in ends:
            last = points[-1]
            ends[row["status"]].append((last["iteration"], 100 * last["val_miou"],
                                        f"{text}<br>{esc(row.get('stop_reason') or '')}"))
    for status, symbol, label in ((STOPPED, "x", "stopped early (ASHA or time budget)"),
                                  (ERRORED, "diamond", "errored")):
        if ends[status]:
            xs, ys, texts = zip(*ends[status])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=label, hovertext=texts, hoverinfo="text",
                                     marker=dict(symbol=symbol, size=11, color=STATUS_COLOURS[status],
                                                 line=dict(width=1, color="black"))))
    fig.update_layout(title="Learning curves of every trial (green finished, yellow stopped early)",
                      xaxis=dict(title="training iteration"), yaxis=dict(title=MIOU))
    return fig


def rung_ranking(data: StudyData) -> go.Figure:
    """Per evaluated iteration: how the val mIoU there ranks the final one, among trials that ran to the end."""
    ranks = rung_ranks(data.reports, data.trials)
    fig = go.Figure()
    # Undefined correlations (too few trials, or a constant score) stay gaps in the line.
    fig.add_trace(go.Scatter(
        x=[r.iteration for r in ranks], y=[None if math.isnan(r.spearman) else r.spearman for r in ranks],
        mode="lines+markers", name="Spearman", text=[f"{r.trials} trials" for r in ranks],
        hovertemplate="iteration %{x}: %{y:.2f} over %{text}<extra></extra>",
        marker=dict(size=9, color=["#d62728" if r.poor else "#2ca02c" if r.known else "#bbbbbb" for r in ranks])))
    fig.add_hline(y=POOR, line=dict(dash="dot", color="#d62728"), annotation_text=f"poor below {POOR}")
    if data.grace:
        fig.add_vline(x=data.grace, line=dict(dash="dash", color="#444"), annotation_text="grace period")
    full = max((r.trials for r in ranks), default=0)
    title = f"How each iteration's val mIoU ranks the final one ({full} trials ran to the end)"
    if full < MIN_TRIALS:
        fig.add_annotation(text=f"{full} trials ran to the end; a rank correlation needs at least {MIN_TRIALS}",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis=dict(title="training iteration"),
                      yaxis=dict(title="Spearman correlation with the final val mIoU", range=[-1.05, 1.05]))
    return fig


def timeline(data: StudyData) -> go.Figure:
    """Which trial ran when and on which node, and how it ended."""
    start = data.start()
    now = max([r["timestamp"] for r in data.reports] + [t["ended"] for t in data.trials if t.get("ended")],
              default=start)
    trials = sorted((t for t in data.trials if t.get("started")), key=lambda t: t["started"])
    fig = go.Figure()
    for status, colour in STATUS_COLOURS.items():
        group = [t for t in trials if t.get("status") == status]
        if not group:
            continue
        begin = [(t["started"] - start).total_seconds() / 60 for t in group]
        length = [((t.get("ended") or now) - t["started"]).total_seconds() / 60 for t in group]
        texts = [f"{hover(t)}<br>node {esc(t.get('node') or '?')}<br>{esc(t.get('stop_reason') or '')}"
                 for t in group]
        fig.add_trace(go.Bar(base=begin, x=length, y=[esc(t["trial_id"]) for t in group], orientation="h",
                             name=status, marker_color=colour, text=[esc(t.get("node") or "") for t in group],
                             textposition="inside", hovertext=texts, hoverinfo="text"))
    fig.update_layout(title="Trial timeline: when each trial ran, on which node (bar text), how it ended",
                      xaxis=dict(title="minutes since the first trial started"),
                      yaxis=dict(title="trial", categoryorder="array",
                                 categoryarray=[esc(t["trial_id"]) for t in trials][::-1]),
                      barmode="overlay", height=max(350, 22 * len(trials) + 150))
    return fig


def _best_report(data: StudyData, trial_id: str) -> dict[str, Any] | None:
    points = [r for r in data.reports_of(trial_id) if finite(r["val_miou"])]
    return max(points, key=lambda r: r["val_miou"]) if points else None


def per_class_iou(data: StudyData) -> go.Figure:
    """IoU per class of the top trials, at each one's best evaluation."""
    names = data.class_names()
    fig = go.Figure()
    for rank, trial in enumerate(data.ranked[:TOP], start=1):
        report = _best_report(data, trial["trial_id"])
        if report is None or not report["iou"]:
            continue
        fig.add_trace(go.Bar(x=names, y=[100 * v if finite(v) else None for v in report["iou"]],
                             name=f"#{rank} {esc(trial['trial_id'])} (iteration {report['iteration']})",
                             hovertext=hover(trial), hoverinfo="text+y"))
    fig.update_layout(title=f"IoU per class of the top {TOP} trials (each at its best evaluation)",
                      barmode="group", xaxis=dict(title="class"), yaxis=dict(title="val IoU (%)"))
    return fig


def bank_fill(data: StudyData) -> go.Figure:
    """How full each class's memory bank was over training, for the top trials."""
    top = data.ranked[:TOP]
    fig = make_subplots(rows=1, cols=max(1, len(top)), shared_yaxes=True,
                        subplot_titles=[f"#{i} {esc(t['trial_id'])}" for i, t in enumerate(top, start=1)])
    names = data.class_names()
    for col, trial in enumerate(top, start=1):
        points = [r for r in data.reports_of(trial["trial_id"]) if r["bank_fill"]]
        z = [[100 * (r["bank_fill"][c] or 0.0) for r in points] for c in range(len(names))]
        size = trial.get("config.bank_size")
        fig.add_trace(go.Heatmap(x=[r["iteration"] for r in points], y=names, z=z, zmin=0, zmax=100,
                                 colorscale="Blues", showscale=col == 1, colorbar=dict(title="filled (%)"),
                                 hovertemplate=f"trial {esc(trial['trial_id'])} (bank {size} per class)<br>"
                                               "class %{y}, iteration %{x}: %{z:.0f}% full<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="training iteration", row=1, col=col)
    fig.update_yaxes(title_text="class", row=1, col=1)
    fig.update_layout(title=f"Memory-bank fill per class over training, top {len(top)} trials")
    return fig


def top_table(data: StudyData, count: int = 10) -> go.Figure:
    """The best trials with the values they were sampled with."""
    top = data.ranked[:count]
    sampled = [stored_params(t) for t in top]
    names = list(data.params)
    header = ["rank", "trial", "status", MIOU, "iterations", "wall (s)", "node", *map(esc, names)]
    columns: list[list[Any]] = [
        list(range(1, len(top) + 1)), [esc(t["trial_id"]) for t in top], [esc(t["status"]) for t in top],
        [f"{100 * t['best_val_miou']:.1f}" for t in top], [t.get("iterations") for t in top],
        [f"{t['wall_seconds']:.0f}" if finite(t.get("wall_seconds")) else "" for t in top],
        [esc(t.get("node") or "") for t in top],
        *[[fmt(p[n]) if n in p else "-" for p in sampled] for n in names],
    ]
    fig = go.Figure(go.Table(header=dict(values=[f"<b>{h}</b>" for h in header], align="left"),
                             cells=dict(values=columns, align="left")))
    fig.update_layout(title=f"Top {len(top)} trials (finished first, then stopped early; by best val mIoU)",
                      height=table_height(len(top)))
    return fig


def written_at() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
