"""The report's figures of ``semiseg-study ablate``: each group's two contributions, and gain against cost."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from study.ablate import PAPER, compute_text, cost_text, summarise
from study.report.data import esc
from study.report.sweep import table_height
from study.retrain import gain_text


def _points(gain: tuple[float, float, int, int] | None) -> tuple[float | None, float | None]:
    if gain is None:
        return None, None
    mean, std, _, _ = gain
    return 100 * mean, (0.0 if math.isnan(std) else 100 * std)  # one seed: no spread to draw


def ablation_figures(rows: list[dict[str, Any]]) -> list[go.Figure]:
    """For the report: per group both contributions (bars, ± std over seeds), each variant's gain over
    the paper point against its seconds per iteration, and the table the command prints."""
    summary = summarise(rows)
    groups = summary["groups"]
    names = [esc(g["group"]) for g in groups]
    bars = go.Figure()
    for key, label, colour in (("leave_out", "left out of the winner (winner minus without)", "#1f77b4"),
                               ("add_in", "added to the paper point (with minus paper)", "#ff7f0e")):
        values = [_points(g[key]) for g in groups]
        bars.add_trace(go.Bar(y=names, x=[v[0] for v in values], orientation="h", name=label, marker_color=colour,
                              error_x=dict(type="data", array=[v[1] for v in values]),
                              hovertext=[f"{esc(g['group'])}: {gain_text(g[key])}<br>"
                                         f"{cost_text(g[key + '_cost'])}" for g in groups], hoverinfo="text"))
    bars.update_layout(title=f"What each group is worth: test mIoU points, paired by seed (trial "
                             f"{esc(summary['winner'])}, seeds {', '.join(map(str, summary['seeds']))})",
                       barmode="group", xaxis=dict(title="contribution (test mIoU points)", zeroline=True),
                       yaxis=dict(autorange="reversed"), height=max(320, 120 + 70 * len(groups)))

    paper = summary["paper"]
    against = summary["against_paper"]
    cost = go.Figure()
    if paper is not None:
        cost.add_trace(go.Scatter(x=[paper.seconds_per_iteration], y=[0.0], mode="markers+text", name=PAPER,
                                  text=[PAPER], textposition="top center", marker=dict(size=12, symbol="diamond")))
    values = [_points(v["gain"]) for v in against]
    cost.add_trace(go.Scatter(
        x=[v["seconds_per_iteration"] for v in against], y=[v[0] for v in values], mode="markers+text",
        name="variants", text=[esc(v["variant"]) for v in against], textposition="top center",
        error_y=dict(type="data", array=[v[1] for v in values]),
        hovertext=[f"{esc(v['variant'])}: {gain_text(v['gain'])}; {v['seconds_per_iteration']:.3f} s/it, "
                   f"{v['images_per_second']:.0f} img/s; extra compute {compute_text(v['extra'], v['gain_per_compute'])[0]}"
                   for v in against], hoverinfo="text", marker=dict(size=10)))
    cost.update_layout(title="Gain over the paper point against the cost of a training iteration",
                       xaxis=dict(title="seconds per iteration (mean over seeds)"),
                       yaxis=dict(title="gain over the paper point (test mIoU points)"))

    cells = [[esc(v["variant"]) for v in against], [gain_text(v["gain"]) for v in against],
             [f"{v['seconds_per_iteration']:.3f}" for v in against], [f"{v['images_per_second']:.0f}" for v in against],
             *map(list, zip(*(compute_text(v["extra"], v["gain_per_compute"]) for v in against)))]
    table = go.Figure(go.Table(
        header=dict(values=["<b>variant</b>", "<b>gain over paper point</b>", "<b>s/it</b>", "<b>img/s</b>",
                            "<b>extra compute</b>", "<b>gain per +100% compute</b>"], align="left"),
        cells=dict(values=cells if against else [[] for _ in range(6)], align="left")))
    table.update_layout(title="Against the paper point: gain, cost, and gain per extra compute",
                        height=table_height(len(against)))
    return [bars, cost, table]
