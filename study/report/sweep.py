"""Figures of the search itself: how fast it found good configs, and which params mattered."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution
from plotly.subplots import make_subplots

from search_spaces.space import quiet_optuna
from study.records import ERRORED, FINISHED, INTERRUPTED, RUNNING, STOPPED, stored_params
from study.report.data import StudyData, esc, finite

STATUS_COLOURS = dict(zip((FINISHED, STOPPED, ERRORED, RUNNING, INTERRUPTED),
                          ("#2a9d8f", "#e9c46a", "#e63946", "#457b9d", "#8d99ae")))
MIOU = "val mIoU (%)"


def note_if_empty(fig: go.Figure, data: StudyData) -> go.Figure:
    """Say why a figure of params is blank, rather than leave an empty frame."""
    if not data.params:
        fig.add_annotation(text="this study's space samples no params (e.g. the paper space)",
                           showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def table_height(rows: int) -> int:
    """Pixels for a go.Table of ``rows`` rows below a title (Plotly does not size tables to fit)."""
    return 230 + 34 * rows


def hover(row: dict[str, Any], score: float | None = None) -> str:
    """Hover text of a trial: its id, how it ended, its score and the values it was sampled with."""
    lines = [f"trial {esc(row['trial_id'])} ({esc(row.get('status'))})"]
    value = row.get("best_val_miou") if score is None else score
    if finite(value):
        lines.append(f"val mIoU {100 * value:.1f}")
    lines += [f"{esc(k)} = {fmt(v)}" for k, v in sorted(stored_params(row).items())]
    return "<br>".join(lines)


def scored(data: StudyData) -> list[dict[str, Any]]:
    return [t for t in data.trials if finite(t.get("best_val_miou")) and t.get("status") != ERRORED]


def best_so_far(data: StudyData) -> go.Figure:
    """The best val mIoU found so far, against the study's wall time and against trials ended."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("against wall time", "against trials ended"))
    start = data.start()
    rows = {t["trial_id"]: t for t in data.trials}
    points = sorted((r for r in data.reports if finite(r["val_miou"])), key=lambda r: r["timestamp"])
    xs, ys, texts, best = [], [], [], -math.inf
    for report in points:
        best = max(best, report["val_miou"])
        xs.append((report["timestamp"] - start).total_seconds() / 60 if start else 0.0)
        ys.append(100 * best)
        texts.append(hover(rows.get(report["trial_id"], {"trial_id": report["trial_id"]}), report["val_miou"]))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name="best so far",
                             hovertext=texts, hoverinfo="text+x+y"), row=1, col=1)
    ended = sorted((t for t in scored(data) if t.get("ended")), key=lambda t: t["ended"])
    running = -math.inf
    count_x, count_best, own = [], [], []
    for number, trial in enumerate(ended, start=1):
        running = max(running, trial["best_val_miou"])
        count_x.append(number)
        count_best.append(100 * running)
        own.append(100 * trial["best_val_miou"])
    fig.add_trace(go.Scatter(x=count_x, y=count_best, mode="lines", line_shape="hv", name="best so far",
                             showlegend=False), row=1, col=2)
    fig.add_trace(go.Scatter(x=count_x, y=own, mode="markers", name="each trial's best",
                             marker=dict(color=[STATUS_COLOURS.get(t["status"], "grey") for t in ended]),
                             hovertext=[hover(t) for t in ended], hoverinfo="text"), row=1, col=2)
    fig.update_xaxes(title_text="wall time since the first trial started (min)", row=1, col=1)
    fig.update_xaxes(title_text="trials ended", row=1, col=2)
    fig.update_yaxes(title_text=MIOU)
    fig.update_layout(title=f"Best so far: {esc(data.name)}")
    return fig


def _device_hours(seconds: Any, devices: Any) -> float:
    """Compute as device-hours: a trial's seconds times the CPUs or GPUs it held (1 if not recorded)."""
    return float(seconds or 0.0) * float(devices if finite(devices) else 1.0) / 3600


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points no other point beats on both (cheaper or as cheap, and better), by cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front


def best_against_spent(reports: list[dict[str, Any]], spent: Callable[[dict[str, Any]], float]
                       ) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """The scored reports in the order the driver received them, the study's compute by then (each trial's
    ``spent`` at its latest report, summed) and the best val mIoU by then."""
    ordered = sorted((r for r in reports if finite(r["val_miou"])), key=lambda r: r["timestamp"])
    latest: dict[str, float] = {}
    xs, ys, best = [], [], -math.inf
    for report in ordered:
        latest[report["trial_id"]] = spent(report)
        best = max(best, report["val_miou"])
        xs.append(sum(latest.values()))
        ys.append(best)
    return ordered, xs, ys


def compute(data: StudyData) -> go.Figure:
    """What the search paid: best val mIoU against cumulative compute, and each trial's score against its cost."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("best so far against the compute spent",
                                                        "each trial: best val mIoU against its cost"))
    rows = {t["trial_id"]: t for t in data.trials}
    reports, xs, ys = best_against_spent(data.reports, lambda r: _device_hours(r.get("time_total_s"), r.get("devices")))
    texts = [hover(rows.get(r["trial_id"], {"trial_id": r["trial_id"]}), r["val_miou"]) for r in reports]
    fig.add_trace(go.Scatter(x=xs, y=[100 * y for y in ys], mode="lines+markers", line_shape="hv",
                             name="best so far", hovertext=texts, hoverinfo="text+x+y"), row=1, col=1)
    trials = [t for t in scored(data) if finite(t.get("wall_seconds"))]
    costs = [_device_hours(t["wall_seconds"], t.get("devices")) for t in trials]
    fig.add_trace(go.Scatter(x=costs, y=[100 * t["best_val_miou"] for t in trials], mode="markers", name="trials",
                             marker=dict(color=[STATUS_COLOURS.get(t["status"], "grey") for t in trials], size=9),
                             hovertext=[hover(t) for t in trials], hoverinfo="text+x"), row=1, col=2)
    front = pareto_front(list(zip(costs, [100 * t["best_val_miou"] for t in trials])))
    fig.add_trace(go.Scatter(x=[c for c, _ in front], y=[v for _, v in front], mode="lines", line_shape="hv",
                             name="Pareto front", line=dict(dash="dot", color="#264653")), row=1, col=2)
    fig.update_xaxes(title_text="compute: trial time x devices, summed (device-hours)", row=1, col=1)
    fig.update_xaxes(title_text="trial cost (device-hours)", row=1, col=2)
    fig.update_yaxes(title_text=MIOU)
    fig.update_layout(title="Score against compute (devices: CPUs, or GPUs for a trial on GPUs)")
    return fig


def _axis_values(name: str, dist: Any, values: list[Any]) -> dict[str, Any]:
    """A parallel-coordinates axis: log params on a log10 scale, categories as labelled codes."""
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return dict(label=axis_label(name), values=[choices.index(v) for v in values],
                    tickvals=list(range(len(choices))), ticktext=[esc(c) for c in choices])
    if getattr(dist, "log", False):
        ticks = [dist.low, math.sqrt(dist.low * dist.high), dist.high]
        return dict(label=axis_label(name), values=[math.log10(v) for v in values],
                    range=[math.log10(dist.low), math.log10(dist.high)],
                    tickvals=[math.log10(t) for t in ticks], ticktext=[f"{t:.3g}" for t in ticks])
    return dict(label=axis_label(name), values=list(values), range=[dist.low, dist.high])


def axis_label(name: str, width: int = 12) -> str:
    """A param name broken after its underscores into lines of about ``width`` characters, so that the
    titles of a dozen axes side by side do not run into each other (Plotly does not wrap them)."""
    lines = [""]
    for word in (w + "_" for w in esc(name).split("_")):
        lines[-1:] = [lines[-1] + word] if len(lines[-1]) + len(word) <= width + 1 or not lines[-1] else \
            [lines[-1], word]
    return "<br>".join(lines)[:-1]


def parallel_coordinates(data: StudyData) -> go.Figure:
    """Every trial as a line through its params, coloured by its best val mIoU."""
    trials = scored(data)
    sampled = [stored_params(t) for t in trials]
    shared = [n for n in data.params if all(n in p for p in sampled)]
    left_out = [n for n in data.params if n not in shared]
    dims = [_axis_values(n, data.params[n], [p[n] for p in sampled]) for n in shared]
    scores = [100 * t["best_val_miou"] for t in trials]
    dims.append(dict(label=MIOU, values=scores))
    # Titles below the axes: wrapped titles grow downwards, into the top ticks if placed above.
    fig = go.Figure(go.Parcoords(dimensions=dims, labelside="bottom",
                                 line=dict(color=scores, colorscale="Viridis", showscale=True, colorbar=dict(title=MIOU))))
    note = f" ({', '.join(map(esc, left_out))}: only some trials sample it, see its slice)" if left_out else ""
    lines = max(d["label"].count("<br>") + 1 for d in dims)
    fig.update_layout(title=f"Parameters of {len(trials)} trials, coloured by best val mIoU{note}",
                      margin=dict(b=40 + 16 * lines))
    return fig


def slices(data: StudyData) -> go.Figure:
    """One panel per param: each trial's best val mIoU against the value it was sampled with."""
    names = list(data.params) or ["(no searched params)"]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[esc(n) for n in names],
                        vertical_spacing=min(0.3, 0.6 / rows), horizontal_spacing=0.08)
    trials = scored(data)
    sampled, texts = [stored_params(t) for t in trials], [hover(t) for t in trials]  # once a trial, not a panel
    for i, name in enumerate(data.params):
        row, col = divmod(i, cols)
        having = [k for k, p in enumerate(sampled) if name in p]
        fig.add_trace(go.Scatter(
            x=[sampled[k][name] for k in having], y=[100 * trials[k]["best_val_miou"] for k in having],
            mode="markers", showlegend=False, name=esc(name),
            marker=dict(color=[STATUS_COLOURS.get(trials[k]["status"], "grey") for k in having], size=8),
            hovertext=[texts[k] for k in having], hoverinfo="text"), row=row + 1, col=col + 1)
        fig.update_xaxes(title_text=esc(name), row=row + 1, col=col + 1,
                         type="log" if getattr(data.params[name], "log", False) else None)
        fig.update_yaxes(title_text=MIOU if col == 0 else None, row=row + 1, col=col + 1)
    fig.update_layout(title="Slices: best val mIoU per param value (green finished, yellow stopped early)",
                      height=320 * rows + 80)
    return note_if_empty(fig, data)


def _idw_grid(x: np.ndarray, y: np.ndarray, z: np.ndarray, size: int = 40) -> tuple[np.ndarray, ...]:
    """Inverse-distance interpolation on a grid over the unit-scaled (log) plane of the points."""
    gx, gy = np.linspace(x.min(), x.max(), size), np.linspace(y.min(), y.max(), size)
    span_x, span_y = np.ptp(x) or 1.0, np.ptp(y) or 1.0
    dx = (gx[None, :, None] - x[None, None, :]) / span_x
    dy = (gy[:, None, None] - y[None, None, :]) / span_y
    weight = 1.0 / np.maximum(dx ** 2 + dy ** 2, 1e-12)
    return gx, gy, (weight * z).sum(-1) / weight.sum(-1)


def bank_temperature_contour(data: StudyData, x_name: str = "bank_size", y_name: str = "temperature") -> go.Figure:
    """Best val mIoU over memory-bank size x InfoNCE temperature (the trials that sampled both)."""
    both = [(t, p) for t in scored(data) if x_name in (p := stored_params(t)) and y_name in p]
    having = [t for t, _ in both]
    x = np.array([p[x_name] for _, p in both], dtype=float)
    y = np.array([p[y_name] for _, p in both], dtype=float)
    z = np.array([100 * t["best_val_miou"] for t in having])
    fig = go.Figure()
    enough = len(having) >= 3 and len(set(x)) > 1 and len(set(y)) > 1
    if enough:
        gx, gy, gz = _idw_grid(np.log10(x), np.log10(y), z)
        fig.add_trace(go.Contour(x=(10 ** gx).tolist(), y=(10 ** gy).tolist(), z=gz.tolist(), colorscale="Viridis", colorbar=dict(title=MIOU),
                                 contours=dict(coloring="heatmap"), hoverinfo="skip", name="interpolated"))
    fig.add_trace(go.Scatter(x=x.tolist(), y=y.tolist(), mode="markers", name="trials",
                             marker=dict(color="white", size=9, line=dict(color="black", width=1)),
                             hovertext=[hover(t) for t in having], hoverinfo="text"))
    how = ("interpolated between the trials (inverse distance, log axes); dots are trials" if enough else
           f"{len(having)} trials sampled both: too few for a contour, dots are trials")
    fig.update_layout(title=f"Memory-bank size x temperature: {how}",
                      xaxis=dict(title=esc(x_name), type="log"), yaxis=dict(title=esc(y_name), type="log"))
    return fig


def importance(data: StudyData) -> go.Figure:
    """fANOVA importance of the params, over the finished trials (Optuna's evaluator)."""
    trials = [t for t in scored(data) if t["status"] == FINISHED]
    basis = FINISHED
    if len(trials) < 2:  # a study cut short: fall back to every scored trial, and say so
        trials, basis = scored(data), "scored (fewer than 2 finished; early stops included)"
    fig = go.Figure()
    values: dict[str, float] = {}
    if len(trials) >= 2 and data.params:
        with quiet_optuna():
            study = optuna.create_study(direction="maximize")
        for t in trials:
            params = stored_params(t)
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={n: data.params[n] for n in params}, value=t["best_val_miou"]))
        try:
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except RuntimeError as err:  # fANOVA cannot split trials whose params are all the same
            fig.add_annotation(text=f"no importance: {esc(err)}", showarrow=False, x=0.5, y=0.5, xref="paper",
                               yref="paper")
    names = list(values)[::-1]
    fig.add_trace(go.Bar(x=[values[n] for n in names], y=[esc(n) for n in names], orientation="h",
                         hovertemplate="%{y}: %{x:.3f}<extra></extra>", name="importance"))
    conditional = sorted(set(data.params) - set(values))
    note = f"; {', '.join(map(esc, conditional))} left out (not sampled in every trial)" if conditional else ""
    fig.update_layout(title=f"Parameter importance (fANOVA) over {len(trials)} {basis} trials{note}",
                      xaxis=dict(title="share of the variance of val mIoU"), yaxis=dict(title="param"))
    return note_if_empty(fig, data)
