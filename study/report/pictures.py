"""What a segmentation researcher looks at first: predictions beside the ground truth, and the confusion.

From the rows of ``retrain`` (else ``ablate``): for one seed, the first val images with their ground
truth and the predictions of the winner, the paper point and supervised-only (ablate has no
supervised-only run), and the winner's confusion matrix on test. Both come from the Parquet alone
(``records.PICTURES``); images are embedded as data URIs, so the page stays one file that opens
offline. Rows stored before schema 4 have no pictures: then the figures are absent.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study import ablate, retrain
from study.previews import decode
from study.report.data import StudyData, esc
from trainer.classes import CLASSES

IGNORE = 255


@dataclass(frozen=True)
class Shown:
    """Which runs the figures show: one seed's run of each reference, and every seed of the winner."""

    source: str                          # "retrain" or "ablate"
    seed: int
    iterations: int
    winner: str                          # the winner's label in its table
    columns: list[tuple[str, dict]]      # (column title, row) in the order drawn, the winner first
    winner_runs: list[dict]              # the winner's rows at that budget, every seed


def palette() -> np.ndarray:
    """[256, 3] uint8: PASCAL VOC's colour map (class 0 black, 255 = ignore pale), the one researchers know."""
    colours = np.zeros((256, 3), np.uint8)
    for index in range(256):
        code, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        colours[index] = rgb
    return colours


def _shown(data: StudyData) -> Shown | None:
    """The retrain runs if any carry pictures, else the latest ablation plan's; None without either."""
    runs = [r for r in data.retrain if r.get("val_preview")]
    winners = [r for r in runs if r["rank"] == 1]
    if winners:
        newest = max(winners, key=lambda r: r["timestamp"])  # a later retrain may rank another trial first
        key, source = "candidate", "retrain"
        labels = [(f"winner {newest['candidate']}", newest["candidate"]), (retrain.PAPER, retrain.PAPER),
                  (retrain.SUPERVISED, retrain.SUPERVISED)]
    else:
        runs = [r for r in ablate.latest_plan(data.ablate) if r.get("val_preview")]
        newest = next((r for r in runs if r["variant"] == ablate.WINNER), None)
        if newest is None:
            return None
        key, source = "variant", "ablate"
        labels = [(f"winner {newest['winner']}", ablate.WINNER), (ablate.PAPER, ablate.PAPER)]
    runs = [r for r in runs if r["iterations"] == newest["iterations"]]
    by = {(r[key], r["seed"]): r for r in runs}
    winner_seeds = sorted(seed for label, seed in by if label == labels[0][1])
    # The first seed on which every reference has a run; else the winner's first seed, with what it has.
    shared = [s for s in winner_seeds if all((label, s) in by for _, label in labels)]
    seed = (shared or winner_seeds)[0]
    columns = [(title, by[(label, seed)]) for title, label in labels if (label, seed) in by]
    return Shown(source, seed, newest["iterations"], labels[0][1], columns,
                 [by[(labels[0][1], s)] for s in winner_seeds])


def _class_names(row: dict, count: int) -> list[str]:
    names = list(CLASSES.get(str(row.get("config.dataset")), ()))
    return names[:count] if len(names) >= count else [f"class {i}" for i in range(count)]


def _uri(blob: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(blob).decode()}"


def coloured(labels: np.ndarray) -> bytes:
    """A label map as a palette PNG: the class ids stay the pixel values, the browser shows the colours."""
    from PIL import Image

    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette().flatten().tolist())
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def prediction_grid(data: StudyData) -> go.Figure | None:
    """Input, ground truth and each run's prediction, one row per preview image; None without pictures."""
    shown = _shown(data)
    if shown is None:
        return None
    winner_row = shown.columns[0][1]
    entries = winner_row["val_preview"]  # the input and ground truth are the same in every run
    titles = ["input", "ground truth", *(esc(title) for title, _ in shown.columns)]
    fig = make_subplots(rows=len(entries), cols=len(titles), column_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.01)
    present: set[int] = set()
    for row, entry in enumerate(entries, start=1):
        label = decode(entry["label"])
        present |= set(np.unique(label).tolist())
        cells = [_uri(entry["image"], "jpeg"), _uri(coloured(label), "png")]
        for _, run in shown.columns:
            predicted = next(p for p in run["val_preview"] if p["index"] == entry["index"])["prediction"]
            present |= set(np.unique(decode(predicted)).tolist())
            cells.append(_uri(coloured(decode(predicted)), "png"))
        for col, source in enumerate(cells, start=1):
            fig.add_trace(go.Image(source=source, name=f"val image {entry['index']}", hoverinfo="x+y+name"),
                          row=row, col=col)
    # Images have no legend: one square marker per class shown, in its palette colour, is the legend.
    names = _class_names(winner_row, len(winner_row["test_confusion"] or []) or max(present - {IGNORE}) + 1)
    colours = palette()
    for index in sorted(present):
        name = "ignored (255)" if index == IGNORE else names[index] if index < len(names) else f"class {index}"
        r, g, b = colours[index]
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=esc(name), showlegend=True,
                                 marker=dict(symbol="square", size=14, color=f"rgb({r},{g},{b})",
                                             line=dict(color="#888", width=1))), row=1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(title=f"Predictions on the first {len(entries)} val images: {shown.source} runs of seed "
                            f"{shown.seed} at {shown.iterations} iterations (fixed class palette)",
                      height=140 + 150 * len(entries), legend=dict(title="class"))
    return fig


def confusion_figure(data: StudyData) -> go.Figure | None:
    """The winner's test confusion, summed over its seeds, each true class's row normalised to 100%."""
    shown = _shown(data)
    runs = [r for r in shown.winner_runs if r.get("test_confusion")] if shown else []
    if not runs:
        return None
    counts = np.sum([np.asarray(r["test_confusion"], dtype=np.int64) for r in runs], axis=0)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.where(totals > 0, 100 * counts / np.maximum(totals, 1), np.nan)  # a class absent from test: a gap
    names = [esc(n) for n in _class_names(runs[0], len(counts))]
    fig = go.Figure(go.Heatmap(
        z=[[None if np.isnan(v) else float(v) for v in row] for row in share], x=names, y=names,
        text=counts.tolist(), colorscale="Blues", zmin=0, zmax=100, colorbar=dict(title="% of row"),
        hovertemplate="true %{y}, predicted %{x}: %{z:.1f}% of the class's pixels (%{text} px)<extra></extra>"))
    seeds = (f"seeds {', '.join(str(r['seed']) for r in runs)} summed" if len(runs) > 1
             else f"seed {runs[0]['seed']}")
    fig.update_layout(title=f"Confusion of the winner ({esc(shown.winner)}) on the test split: {shown.source} runs "
                            f"at {shown.iterations} iterations, {seeds}; each row (true class) sums to 100%",
                      xaxis=dict(title="predicted class", type="category", showgrid=False, constrain="domain"),
                      yaxis=dict(title="true class", type="category", autorange="reversed", scaleanchor="x",
                                 showgrid=False, constrain="domain"),
                      height=max(420, 160 + 36 * len(names)))
    return fig


def picture_figures(data: StudyData) -> list[tuple[str, Any]]:
    """(id, figure) of each picture figure the stored rows allow: none without retrain or ablate pictures."""
    figures = [("pictures", prediction_grid(data)), ("confusion", confusion_figure(data))]
    return [(key, fig) for key, fig in figures if fig is not None]
