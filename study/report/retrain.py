"""The report's figures of ``semiseg-study retrain``: the paired table and each seed's scores."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from study.report.data import esc
from study.report.sweep import table_height
from study.retrain import gain_text, mean_std_text, summarise


def retrain_figures(rows: list[dict[str, Any]]) -> list[Any]:
    """For the report: the table, and each seed's test mIoU across candidates (paired lines)."""
    summary = summarise(rows)
    table = go.Figure(go.Table(
        header=dict(values=["<b>config</b>", "<b>seeds</b>", "<b>test mIoU (%)</b>",
                            "<b>gain over paper point</b>", "<b>gain over supervised only</b>"], align="left"),
        cells=dict(values=[[esc(e["candidate"]) for e in summary], [e["seeds"] for e in summary],
                           [mean_std_text(e["test_miou"], e["test_std"]) for e in summary],
                           [gain_text(e["gain_paper"]) for e in summary], [gain_text(e["gain_supervised"]) for e in summary]],
                   align="left")))
    table.update_layout(title="Retrained on fresh seeds, scored on the test split (mean ± std over seeds; "
                              "gains paired by seed)", height=table_height(len(summary)))
    order = [e["candidate"] for e in summary]
    paired = go.Figure()
    for seed in sorted({r["seed"] for r in rows}):
        points = sorted((r for r in rows if r["seed"] == seed), key=lambda r: order.index(r["candidate"]))
        paired.add_trace(go.Scatter(x=[esc(r["candidate"]) for r in points], y=[100 * r["test_miou"] for r in points],
                                    mode="lines+markers", name=f"seed {seed}"))
    paired.update_layout(title="Test mIoU per seed: a line joins the runs that share a seed",
                         xaxis=dict(title="config"), yaxis=dict(title="test mIoU (%)"))
    return [table, paired]
