"""report.html: every figure on one self-contained page (plotly.js inline, opens offline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from study.report import compare, sweep, trials
from study.report.ablate import ablation_figures
from study.report.pictures import picture_figures
from study.report.retrain import retrain_figures
from study.report.data import StudyData, esc, load_study
from study.records import STATUSES
from study.rung_ranks import grace_warning, rung_ranks
from study.location import Location, as_location

# (id, heading, how to read it, builder): the page's figures, in reading order.
Section = tuple[str, str, str, Callable[[StudyData], go.Figure]]
SECTIONS: list[Section] = [
    ("best-so-far", "Best so far", "How quickly the search found good configs.", sweep.best_so_far),
    ("compute", "Score against compute", "What the search spent to get there, and which trials were worth "
     "their cost (the dotted line: no trial is both cheaper and better).", sweep.compute),
    ("parallel", "Parallel coordinates", "Drag along an axis to select a range.", sweep.parallel_coordinates),
    ("slices", "Slices", "One panel per searched param; hover a dot for its trial.", sweep.slices),
    ("contour", "Bank size x temperature", "Where InfoNCE trials landed.", sweep.bank_temperature_contour),
    ("importance", "Importance", "Which params explain the score, and how many trials that rests on.",
     sweep.importance),
    ("curves", "Learning curves", "Crosses mark trials stopped early.", trials.learning_curves),
    ("rung-ranks", "Do early scores rank the final one?",
     "ASHA stops on the score at its rungs; near 1 the early order is the final order, near 0 it is noise.",
     trials.rung_ranking),
    ("timeline", "Timeline", "Trials over wall time, by node and outcome.", trials.timeline),
    ("per-class", "Per-class IoU", "What the best trials segment well, and what not.", trials.per_class_iou),
    ("bank-fill", "Memory bank", "Fill of each class's bank over training.", trials.bank_fill),
    ("top", "Top trials", "The ranking used by retrain and export.", trials.top_table),
]
ABLATION_FIGURES = ("ablate-groups", "ablate-cost", "ablate-table")  # ids of the ablation's figures
COMPARE: list[tuple[str, Callable[[list[StudyData]], go.Figure]]] = [
    ("compare-table", compare.compare_table), ("compare-best", compare.compare_best_so_far),
    ("compare-trials", compare.compare_trials)]


def _div(fig: go.Figure, key: str) -> str:
    fig.update_layout(template="plotly_white", margin=dict(t=80))
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                       config={"displaylogo": False, "responsive": True})


def render(data: StudyData, others: list[StudyData] = (), refresh: float | None = None,
           running: bool = False) -> str:
    """The whole page as a string."""
    parts: list[str] = []
    warning = grace_warning(rung_ranks(data.reports, data.trials), data.grace) if data.grace else None
    if warning:
        parts.append(f"<p class='warning' id='grace-warning'>Warning: {esc(warning)}.</p>")
    if others:
        parts.append("<h2>Studies compared</h2>")
        parts += [_div(build([data, *others]), key) for key, build in COMPARE]
    for key, heading, hint, build in SECTIONS:
        parts.append(f"<h2>{esc(heading)}</h2><p class='hint'>{esc(hint)}</p>{_div(build(data), key)}")
    if data.retrain:
        parts.append("<h2>Retrained on seeds (test split)</h2>")
        parts += [_div(fig, f"retrain-{i}") for i, fig in enumerate(retrain_figures(data.retrain))]
    if data.ablate:
        parts.append("<h2>Ablation: what each group of the winner is worth, and what it costs (test split)</h2>"
                     "<p class='hint'>Left out: the winner with the group at the paper point's values. Added in: "
                     "the paper point with the group at the winner's values. Same seeds for every variant.</p>")
        parts += [_div(fig, key) for key, fig in zip(ABLATION_FIGURES, ablation_figures(data.ablate))]
    pictures = picture_figures(data)
    if pictures:
        parts.append("<h2>What the models predict</h2><p class='hint'>The same val images for every run; "
                     "hover a pixel for its place, read its class from the legend.</p>")
        parts += [_div(fig, key) for key, fig in pictures]
    counts = {s: sum(t.get("status") == s for t in data.trials) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    meta = f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">' if refresh and running else ""
    state = "running; this page reloads itself" if refresh and running else "as stored"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{meta}
<title>semiseg-study: {esc(data.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;color:#222}}
.hint{{color:#666;margin-top:-.6em}} .warning{{color:#a40000;font-weight:600}} .written{{color:#444}}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>Study {esc(data.name)}</h1>
<p class="written" id="written">Written {trials.written_at()} from the Parquet in {esc(data.folder)} ({state}):
{len(data.trials)} trials, {esc(summary)}.</p>
{''.join(parts)}
</body></html>
"""


def write_report(folder: "Location | Path", out: "Location | Path", compare_with: list["Location | Path"] = (),
                 refresh: float | None = None, running: bool = False) -> "Location | Path":
    """Build the report of the study in ``folder`` and write it atomically to ``out``."""
    data = load_study(folder)
    others = [load_study(f) for f in compare_with]
    page = render(data, others, refresh=refresh, running=running)
    # A browser reloading mid-write sees the old page or the new one (atomic locally, one object remotely).
    as_location(out).write_text(page)
    return out


def watch(folder: "Location | Path", out: "Location | Path", every: float, compare_with: list["Location | Path"] = (),
          is_running: Callable[[], bool] = lambda: True, say: Callable[[str], None] = print,
          sleep: Callable[[float], object] = time.sleep) -> None:
    """Rewrite the report every ``every`` seconds while ``is_running()``, then once more."""
    from study.ranking import NoFinishedTrialError
    from study.store import StoreError

    while True:
        running = is_running()
        if (as_location(folder) / "results").is_dir():
            try:
                write_report(folder, out, compare_with, refresh=every, running=running)
            except NoFinishedTrialError:
                pass  # no trial has reported yet: the next round will show it
            except StoreError:
                # While the study runs, its end-of-run compaction can delete a part this round
                # had listed; the next round reads the merged part. After the end it is real.
                if not running:
                    raise
        if not running:
            say(f"report: {out}")
            return
        sleep(every)
