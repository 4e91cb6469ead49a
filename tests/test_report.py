"""The report, retrain and export, on a small real study (real Ray, real Parquet)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raw_parts import raw_rows, repeated
from study.cli import main
from study.ranking import NoFinishedTrialError, ranked_trials
from study.report import SECTIONS, load_study, render, watch, write_report
from study.report import sweep, trials
from study.retrain import PAPER, SUPERVISED, retrain, summarise, table_text
from trainer.config import TrainConfig

@pytest.fixture(scope="module")
def study(small_study) -> Path:
    return small_study


@pytest.fixture(scope="module")
def data(study):
    return load_study(study)


# --- figures, traced back to the Parquet rows ------------------------------------------------------

def test_best_so_far_ends_at_the_best_report_and_the_best_trial(data):
    fig = sweep.best_so_far(data)
    wall, count, own = fig.data
    assert wall.y[-1] == pytest.approx(100 * max(r["val_miou"] for r in data.reports))
    assert list(wall.y) == sorted(wall.y)  # best so far never falls
    ended = [t for t in data.trials if t["status"] != "errored"]
    assert count.y[-1] == pytest.approx(100 * max(t["best_val_miou"] for t in ended))
    assert len(own.x) == len(ended) and sorted(own.y) == sorted(100 * t["best_val_miou"] for t in ended)


def test_compute_figure_sums_each_trials_device_time_and_draws_the_pareto_front(data):
    spent, trials, front = sweep.compute(data).data
    # The last point: every trial's latest report, time x devices, summed, and the best score of all.
    latest = {}
    for r in sorted(data.reports, key=lambda r: r["timestamp"]):
        latest[r["trial_id"]] = r["time_total_s"] * r["devices"] / 3600
    assert all(r["devices"] == 1.0 for r in data.reports)  # the study's trials each held one CPU
    assert spent.x[-1] == pytest.approx(sum(latest.values()))
    assert list(spent.x) == sorted(spent.x) and spent.y[-1] == pytest.approx(100 * max(r["val_miou"] for r in data.reports))
    scored = sweep.scored(data)
    assert sorted(trials.x) == pytest.approx(sorted(t["wall_seconds"] * t["devices"] / 3600 for t in scored))
    # The front: its cheapest point is the cheapest trial, its last the best, and no trial beats a point of it.
    points = list(zip(trials.x, trials.y))
    assert front.x[0] == min(trials.x) and front.y[-1] == max(trials.y)
    for cost, score in zip(front.x, front.y):
        assert not any(c <= cost and s > score for c, s in points)


def test_pareto_front_keeps_only_the_points_nothing_beats():
    points = [(1.0, 40.0), (2.0, 38.0), (2.0, 45.0), (3.0, 44.0), (5.0, 50.0), (4.0, 50.0)]
    assert sweep.pareto_front(points) == [(1.0, 40.0), (2.0, 45.0), (4.0, 50.0)]


def test_parallel_coordinates_and_slices_hold_each_trials_sampled_values(data):
    assert set(data.params) == {"lr", "bank_size", "temperature"}
    dims = {d.label: d for d in sweep.parallel_coordinates(data).data[0].dimensions}
    scored = sweep.scored(data)
    assert list(dims[sweep.MIOU].values) == [100 * t["best_val_miou"] for t in scored]
    assert list(dims["bank_size"].values) == pytest.approx(
        [math.log10(json.loads(t["params"])["bank_size"]) for t in scored])
    panel = {trace.name: trace for trace in sweep.slices(data).data}
    assert list(panel["lr"].x) == [json.loads(t["params"])["lr"] for t in scored]
    assert "trial " + scored[0]["trial_id"] in panel["lr"].hovertext[0]  # hover names the trial and its config
    assert "lr = " in panel["lr"].hovertext[0]


def test_contour_interpolates_between_the_trials_and_shows_them(data):
    contour, dots = sweep.bank_temperature_contour(data).data
    scored = sweep.scored(data)
    assert sorted(dots.x) == sorted(float(json.loads(t["params"])["bank_size"]) for t in scored)
    z = [v for row in contour.z for v in row]
    best = [100 * t["best_val_miou"] for t in scored]
    assert min(best) - 1e-9 <= min(z) and max(z) <= max(best) + 1e-9  # an average of the trials, no more


def test_importance_rests_on_the_finished_trials_and_says_how_many(data):
    fig = sweep.importance(data)
    finished = sum(t["status"] == "finished" for t in data.trials)
    assert f"over {finished} finished trials" in fig.layout.title.text
    assert set(fig.data[0].y) == set(data.params) and sum(fig.data[0].x) == pytest.approx(1.0)


def test_learning_curves_follow_the_reports_and_mark_stopped_trials(data):
    fig = trials.learning_curves(data)
    lines = {t.name: t for t in fig.data if t.mode == "lines"}
    for trial_id, line in lines.items():
        assert list(line.y) == [100 * r["val_miou"] for r in data.reports_of(trial_id)]
    stopped = [t for t in data.trials if t["status"] == "stopped"]
    assert stopped, "ASHA stopped no trial: the study is too easy for this test"
    (marks,) = [t for t in fig.data if t.mode == "markers"]
    assert len(marks.x) == len(stopped)
    assert sorted(marks.x) == sorted(data.reports_of(t["trial_id"])[-1]["iteration"] for t in stopped)


def test_timeline_has_a_bar_per_trial_with_its_node(data):
    bars = trials.timeline(data).data
    assert sum(len(b.y) for b in bars) == len(data.trials)
    assert {b.name for b in bars} == {t["status"] for t in data.trials}
    assert all(text.startswith("127.0.0.1") for b in bars for text in b.text)


def test_top_trials_figures_use_the_ranking(data):
    ranked = ranked_trials(data.trials)
    best = ranked[0]
    table = trials.top_table(data).data[0]
    assert list(table.cells.values[1]) == [t["trial_id"] for t in ranked[:10]]
    per_class = trials.per_class_iou(data).data[0]
    top_report = max(data.reports_of(best["trial_id"]), key=lambda r: r["val_miou"])
    # A class absent from val has no IoU: a gap in the bars, not a zero.
    assert list(per_class.y) == [None if math.isnan(v) else pytest.approx(100 * v) for v in top_report["iou"]]
    assert list(per_class.x) == ["background", *map(str, range(10))]
    heat = trials.bank_fill(data).data[0]
    assert [row[-1] for row in heat.z] == pytest.approx([100 * v for v in data.reports_of(best["trial_id"])[-1]["bank_fill"]])


def test_the_page_is_self_contained_escapes_names_and_says_when_it_was_written(study, tmp_path):
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(study, hostile)
    page = render(load_study(hostile))
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "cdn.plot.ly" not in page.split("</script>", 1)[1]  # plotly.js is inline, nothing is fetched
    assert page.count('class="plotly-graph-div"') == len(SECTIONS)
    assert "Written 20" in page and 'http-equiv="refresh"' not in page


def test_watch_refreshes_while_running_and_stops_with_a_final_page(study, tmp_path):
    out = tmp_path / "live.html"
    states, pages = iter([True, True, False]), []
    watch(study, out, 5.0, is_running=lambda: next(states), say=lambda _: None,
          sleep=lambda _: pages.append(out.read_text()))
    assert len(pages) == 2 and all('http-equiv="refresh" content="5"' in p for p in pages)
    assert 'http-equiv="refresh"' not in out.read_text()


def test_report_of_a_study_without_an_evaluation_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "empty"
    (folder / "results").mkdir(parents=True)
    (folder / "study.json").write_text("{}")
    with pytest.raises(NoFinishedTrialError, match="no trials"):
        write_report(folder, tmp_path / "r.html")
    assert main(["report", "empty", "--dir", str(tmp_path)]) == 2
    assert "nothing to report yet" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# --- retrain and export ---------------------------------------------------------------------------

def test_retrain_scores_top_paper_and_supervised_on_paired_seeds(study):
    rows = retrain(study, top=1, seeds=2, iterations=6, progress=False, say=lambda _: None)
    assert len(rows) == 3 * 2
    labels = {r["candidate"] for r in rows}
    best = ranked_trials(load_study(study).trials)[0]
    assert labels == {f"#1 {best['trial_id']}", PAPER, SUPERVISED}
    assert {r["seed"] for r in rows} == {1000, 1001} and {r["iterations"] for r in rows} == {6}
    by = {(r["candidate"], r["seed"]): r for r in rows}
    supervised = by[(SUPERVISED, 1000)]
    assert supervised["config.pseudo_label_weight"] == 0 and supervised["config.contrastive_weight_labeled"] == 0
    assert by[(PAPER, 1000)]["config.bank_size"] == 16 and by[(PAPER, 1000)]["config.temperature"] == 0.1
    summary = {e["candidate"]: e for e in summarise(rows)}
    gain = summary[f"#1 {best['trial_id']}"]["gain_paper"][0]
    expected = sum(by[(f"#1 {best['trial_id']}", s)]["test_miou"] - by[(PAPER, s)]["test_miou"]
                   for s in (1000, 1001)) / 2
    assert gain == pytest.approx(expected)
    # Its cost against the paper point's: mean seconds per training iteration over the seeds.
    per_it = {c: sum(by[(c, s)]["train_seconds"] for s in (1000, 1001)) / 2 / 6 for c in summary}
    assert summary[SUPERVISED]["seconds_per_iteration"] == pytest.approx(per_it[SUPERVISED])
    assert summary[SUPERVISED]["extra"] == pytest.approx(per_it[SUPERVISED] / per_it[PAPER] - 1)
    assert "| paper point |" in table_text(rows) and "gain per +100% compute" in table_text(rows)
    again = retrain(study, top=1, seeds=2, iterations=6, progress=False, say=lambda _: None)
    assert sorted(map(str, again)) == sorted(map(str, rows))  # a second call trains nothing new
    written = raw_rows(study, "retrain")  # the parts as written: each run once
    assert len(written) == len(rows) and not repeated(written, "candidate", "seed", "iterations")
    page = render(load_study(study))
    assert "Retrained on seeds" in page


def test_export_then_train_repeats_the_trials_score(study, tmp_path):
    out = tmp_path / "best.json"
    assert main(["export", "tiny", "--dir", str(study.parent), "-o", str(out)]) == 0
    best = ranked_trials(load_study(study).trials)[0]
    assert best["status"] == "finished"
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "study", "train", "--config", str(out), "--out", str(run)],
                   check=True, capture_output=True)
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["iteration"] == best["iterations"]
    assert final["val_miou"] == best["last_val_miou"]  # bit-exact: same seed, same thread count
    as_yaml = tmp_path / "best.yaml"
    assert main(["export", "tiny", "--dir", str(study.parent), "-o", str(as_yaml)]) == 0
    assert not as_yaml.read_text().startswith("{") and TrainConfig.load(as_yaml) == TrainConfig.load(out)


def test_export_of_a_rank_out_of_range_names_the_range(study, tmp_path, capsys):
    count = len(ranked_trials(load_study(study).trials))
    assert main(["export", "tiny", "--dir", str(study.parent), "--rank", str(count + 1),
                 "-o", str(tmp_path / "x.json")]) == 2
    assert f"choose 1 to {count}" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_run_report_every_rewrites_the_page_during_the_run_and_once_after(study, tmp_path):
    import time

    from study.cli import _live_report

    folder = tmp_path / "live"
    shutil.copytree(study, folder)
    with _live_report(folder, 0.2) as begin:
        begin()  # as run_study's on_ready does, once the folder is the study's own
        deadline = time.time() + 30
        while not (folder / "report.html").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert 'http-equiv="refresh" content="0"' not in (folder / "report.html").read_text()
        assert 'http-equiv="refresh"' in (folder / "report.html").read_text()  # the study is still running
    assert 'http-equiv="refresh"' not in (folder / "report.html").read_text()  # the final page stays put


def test_a_study_that_samples_nothing_still_renders_and_says_so(data):
    import dataclasses

    plain = dataclasses.replace(data, params={}, trials=[{**t, "params": None} for t in data.trials])
    page = render(plain)
    assert page.count('class="plotly-graph-div"') == len(SECTIONS)
    assert "samples no params" in page


def test_rung_ranking_follows_the_finished_trials_and_a_poor_grace_is_flagged(data):
    import dataclasses

    from study.records import FINISHED
    from study.rung_ranks import rung_ranks

    ranks = rung_ranks(data.reports, data.trials)
    fig = trials.rung_ranking(data)
    assert list(fig.data[0].x) == [r.iteration for r in ranks]
    assert data.grace == 3  # the small study's ASHA, read from its study.json
    # Six finished trials whose order at the grace rung is the reverse of their final order.
    rows = [{**data.trials[0], "trial_id": f"r{i}", "status": FINISHED} for i in range(6)]
    reports = [{**data.reports[0], "trial_id": f"r{i}", "iteration": it, "val_miou": v}
               for i in range(6) for it, v in ((3, 0.5 - 0.05 * i), (6, 0.1 + 0.05 * i), (12, 0.2 + 0.05 * i))]
    reversed_study = dataclasses.replace(data, trials=rows, reports=reports)
    page = render(reversed_study)
    assert "id='grace-warning'" in page and "(iteration 3) ranks the final val mIoU poorly" in page
    assert "id='grace-warning'" not in render(dataclasses.replace(reversed_study, grace=6))
