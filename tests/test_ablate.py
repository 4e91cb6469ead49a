"""`semiseg-study ablate` on the small real study: the plans, the paired numbers, the cost, the resume."""

from __future__ import annotations

import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ABLATE_ARGS, REPORT_SPACE, REPORT_TINY, sigint_by_default
from raw_parts import raw_rows, repeated

from study.ablate import ADD_IN, LEAVE_OUT, PAPER, WINNER, make_plan, run_id, summarise, table_text
from study.cli import main
from study.ranking import ranked_trials
from study.records import config_columns, stored_config
from study.report import load_study, render
from study.spec import StudySpec, write_study_json
from study.store import ResultStore
from trainer.config import ConfigError

BANK, LR = "memory bank", "lr"  # the space's declared group, and its ungrouped param as a group of its own
LABELS = {WINNER, PAPER, f"{WINNER} without {BANK}", f"{PAPER} with {BANK}", f"{WINNER} without {LR}",
          f"{PAPER} with {LR}"}
ITERATIONS = 12  # the small study's budget, which ablate runs by default
TRAINED = 4  # distinct configs: winner, paper, paper + bank (= winner - lr), paper + lr (= winner - bank)


def _default_study(tmp_path: Path, **winner: object) -> tuple[Path, StudySpec]:
    """A study folder of the default space whose trials table holds the paper point and a winner
    (no training: the plan is made from the stored rows alone)."""
    folder = tmp_path / "d"
    folder.mkdir()
    spec = StudySpec(name="d", space="default").validate()
    write_study_json(folder, spec)
    paper = spec.paper_config()
    ResultStore(folder, "d").write_trials([
        {"trial_id": "paper", "status": "finished", "best_val_miou": 0.4, "iterations": paper.iterations,
         **config_columns(paper.to_dict())},
        {"trial_id": "best", "status": "finished", "best_val_miou": 0.5, "iterations": paper.iterations,
         **config_columns(paper.replace(seed=7, **winner).to_dict())}])
    return folder, spec


def test_the_plan_of_the_default_space_takes_the_methods_five_groups(tmp_path):
    folder, spec = _default_study(tmp_path, bank_size=1041, contrastive_loss="infonce", temperature=0.2,
                                  contrastive_weight_labeled=0.9, class_balance="batch", lr=0.005)
    plan = make_plan(folder, spec)
    paper, variants = spec.paper_config(), {v.label: v for v in plan.variants}
    assert plan.winner == "best" and list(plan.groups) == list(spec.search_space.groups)
    assert len(variants) == 2 + 2 * 5
    winner = variants[WINNER].config
    without_bank = variants[f"{WINNER} without memory bank and contrastive loss"].config
    assert (without_bank.bank_size, without_bank.contrastive_loss, without_bank.temperature,
            without_bank.contrastive_weight_labeled) == (256, "paper", paper.temperature, 0.1)
    assert (without_bank.class_balance, without_bank.lr) == ("batch", 0.005)  # the other groups stay the winner's
    rate_alone = variants[f"{PAPER} with learning rate"]
    assert rate_alone.plan == ADD_IN and rate_alone.params == ("lr",)
    assert rate_alone.config == paper.replace(lr=0.005)
    # The winner kept the paper's entropy weight: leaving it out is the winner's own run.
    entropy_out = variants[f"{WINNER} without entropy"]
    assert entropy_out.plan == LEAVE_OUT and run_id(entropy_out.config) == run_id(winner)
    assert run_id(variants[f"{PAPER} with entropy"].config) == run_id(paper)
    assert run_id(winner.replace(seed=1000)) != run_id(winner.replace(seed=1001))


def test_a_param_outside_every_group_is_a_group_of_its_own_and_the_paper_point_is_refused(tmp_path):
    folder, spec = _default_study(tmp_path, lr=0.005, proj_dim=32)  # proj_dim: not searched, yet it differs
    plan = make_plan(folder, spec, iterations=50)
    assert plan.groups["proj_dim"] == ("proj_dim",) and len(plan.variants) == 2 + 2 * 6
    assert {v.config.iterations for v in plan.variants} == {50}
    with pytest.raises(ConfigError, match="trial paper .rank 2. ran the paper point's config: nothing to ablate"):
        make_plan(folder, spec, rank=2)


def _rows(folder: Path) -> list[dict]:
    return ResultStore(folder, "tiny").ablate().to_pylist()


def _written_once(folder: Path) -> list[dict]:
    """The ablation rows as written (every part, no de-duplication), each (run_id, variant) once."""
    rows = raw_rows(folder, "ablate")
    assert not repeated(rows, "run_id", "variant")
    trained = [r["run_id"] for r in rows if not r["shared_run"]]
    assert not repeated([{"run_id": r} for r in trained], "run_id")  # each run trained once
    return rows


def test_ablate_runs_both_plans_on_the_same_seeds_and_prints_the_paired_contributions(ablated_study):
    folder, printed = ablated_study
    rows = _written_once(folder)
    by = {(r["variant"], r["seed"]): r for r in rows}
    assert len(by) == len(rows) == len(LABELS) * 2 and {r["variant"] for r in rows} == LABELS
    assert {r["seed"] for r in rows} == {1000, 1001} and {r["iterations"] for r in rows} == {ITERATIONS}
    best = ranked_trials(load_study(folder).trials)[0]
    assert {r["winner"] for r in rows} == {best["trial_id"]}

    # The configs: each group set back to the paper point's values, or alone on the paper point.
    winner, paper = stored_config(best), {"bank_size": 16, "temperature": 0.1, "lr": 0.01}
    without_bank = by[(f"{WINNER} without {BANK}", 1000)]
    assert (without_bank["config.bank_size"], without_bank["config.temperature"]) == (16, 0.1)
    assert without_bank["config.lr"] == winner.lr != paper["lr"]
    with_bank = by[(f"{PAPER} with {BANK}", 1000)]
    assert (with_bank["config.bank_size"], with_bank["config.lr"]) == (winner.bank_size, 0.01)
    assert json.loads(with_bank["group_params"]) == ["bank_size", "temperature"]
    assert by[(WINNER, 1001)]["config.seed"] == 1001

    # With two groups the winner without one is the paper point with the other: trained once, both rows.
    assert without_bank["run_id"] == by[(f"{PAPER} with {LR}", 1000)]["run_id"]
    assert without_bank["test_miou"] == by[(f"{PAPER} with {LR}", 1000)]["test_miou"]
    trained = [r for r in rows if not r["shared_run"]]
    assert len(trained) == TRAINED * 2 and len({r["run_id"] for r in trained}) == TRAINED * 2

    # The cost columns measure the run: 12 steps of 4 labeled + 4 unlabeled images each.
    for r in rows:
        assert r["seconds_per_iteration"] == pytest.approx(r["train_seconds"] / ITERATIONS)
        assert r["images_per_second"] * r["train_seconds"] == pytest.approx(ITERATIONS * 8)
        assert r["device_type"] == "cpu" and r["devices"] == 1.0

    # Contributions are paired by seed; the printed table shows them.
    summary = summarise(rows)
    groups = {g["group"]: g for g in summary["groups"]}
    assert list(groups) == [BANK, LR]
    gains = [by[(WINNER, s)]["test_miou"] - by[(f"{WINNER} without {BANK}", s)]["test_miou"] for s in (1000, 1001)]
    mean, std, won, count = groups[BANK]["leave_out"]
    assert (mean, std, won, count) == (pytest.approx(statistics.fmean(gains)), pytest.approx(statistics.stdev(gains)),
                                       sum(g > 0 for g in gains), 2)
    alone = [by[(f"{PAPER} with {LR}", s)]["test_miou"] - by[(PAPER, s)]["test_miou"] for s in (1000, 1001)]
    assert groups[LR]["add_in"][0] == pytest.approx(statistics.fmean(alone))
    assert table_text(rows) in printed
    assert f"| {BANK} | bank_size, temperature | {100 * mean:+.1f} ± {100 * std:.1f} ({won}/2 seeds)" in printed
    against = {v["variant"]: v for v in summary["against_paper"]}
    assert set(against) == LABELS - {PAPER}
    paper_cost = statistics.fmean(by[(PAPER, s)]["seconds_per_iteration"] for s in (1000, 1001))
    assert against[WINNER]["extra"] == pytest.approx(against[WINNER]["seconds_per_iteration"] / paper_cost - 1)
    assert "gain per +100% compute" in printed and "ablate" in printed.splitlines()[-1]


def test_the_report_shows_the_ablation(ablated_study):
    folder, _ = ablated_study
    data = load_study(folder)
    page = render(data)
    assert "Ablation: what each group" in page
    for key in ("ablate-groups", "ablate-cost", "ablate-table"):
        assert f'id="fig-{key}"' in page
    from study.report.ablate import ablation_figures

    bars, cost, _ = ablation_figures(data.ablate)
    groups = {g["group"]: g for g in summarise(data.ablate)["groups"]}
    leave_out = bars.data[0]
    assert list(leave_out.y) == [BANK, LR]
    assert list(leave_out.x) == pytest.approx([100 * groups[BANK]["leave_out"][0], 100 * groups[LR]["leave_out"][0]])
    assert cost.data[0].y == (0.0,) and len(cost.data[1].x) == len(LABELS) - 1


def test_ablate_refuses_bad_input_in_one_line(ablated_study, tmp_path, capsys):
    folder, _ = ablated_study
    for args, words in ((["ablate", "nosuch", "--dir", str(folder.parent)], "no study 'nosuch'"),
                        (["ablate", "tiny", "--dir", str(folder.parent), "--seeds", "0"], "--seeds 0"),
                        (["ablate", "tiny", "--dir", str(folder.parent), "--iterations", "0"], "--iterations 0"),
                        (["ablate", "tiny", "--dir", str(folder.parent), "--rank", "99"], "choose 1 to")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_an_interrupted_ablate_resumes_without_rerunning_stored_runs(ray_local, small_study, tmp_path, capsys):
    """Ctrl-C a real `semiseg-study ablate` (a second driver on the session's Ray) after two runs,
    then run it again: the stored runs stay as they are and only the others train."""
    root = tmp_path / "studies"
    shutil.copytree(small_study, root / "tiny", ignore=shutil.ignore_patterns("ablate", "retrain"))
    parts = root / "tiny" / "ablate"
    address = ray_local.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "study", "ablate", "tiny", "--dir", str(root), *ABLATE_ARGS,
                               "--address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=sigint_by_default)
    deadline = time.monotonic() + 240
    while len(list(parts.glob("*.parquet"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130 and "the same command again trains only the others" in err, err

    before = {(r["run_id"], r["variant"]): r for r in _written_once(root / "tiny")}
    trained_before = {r["run_id"] for r in before.values() if not r["shared_run"]}
    assert 2 <= len(trained_before) < TRAINED * 2, "the interrupt came too late to test a resume"
    files_before = {p.name for p in parts.glob("*.parquet")}
    from study.report.ablate import ablation_figures

    assert len(ablation_figures(list(before.values()))) == 3  # the report draws a half-done ablation

    assert main(["ablate", "tiny", "--dir", str(root), *ABLATE_ARGS]) == 0
    out = capsys.readouterr().out
    assert (f"{TRAINED * 2} distinct runs of {ITERATIONS} iterations: {TRAINED * 2 - len(trained_before)} to train "
            f"({len(trained_before)} stored already)") in out

    rows = _written_once(root / "tiny")
    after = {(r["run_id"], r["variant"]): r for r in rows}
    assert len(after) == len(rows) == len(LABELS) * 2
    assert all(after[key] == row for key, row in before.items())  # the stored rows untouched
    assert files_before <= {p.name for p in parts.glob("*.parquet")}
    trained = [r["run_id"] for r in rows if not r["shared_run"]]
    assert len(trained) == len(set(trained)) == TRAINED * 2  # no run trained twice
    assert main(["ablate", "tiny", "--dir", str(root), *ABLATE_ARGS]) == 0  # a third call trains nothing
    assert "0 to train (8 stored already)" in capsys.readouterr().out and len(_written_once(root / "tiny")) == len(rows)
    assert LEAVE_OUT in {r["plan"] for r in rows}


def test_a_variant_that_diverges_is_stored_with_its_reason_and_not_trained_again(ray_local, tmp_path, capsys):
    """A winner whose loss turns NaN (the trainer's fault switch, a field the space does not search)
    on a tiny study: the ablation ends, says which runs diverged, and a rerun trains none of them again."""
    space = tmp_path / "space.yaml"
    space.write_text(REPORT_SPACE)
    spec = StudySpec(name="div", space=str(space), max_iters=6, grace=3, reduction=2.0, fixed=dict(REPORT_TINY))
    folder = tmp_path / "div"
    folder.mkdir()
    write_study_json(folder, spec.validate())
    paper = spec.paper_config()
    ResultStore(folder, "div").write_trials([
        {"trial_id": "paper", "status": "finished", "best_val_miou": 0.4, **config_columns(paper.to_dict())},
        {"trial_id": "best", "status": "finished", "best_val_miou": 0.5,
         **config_columns(paper.replace(lr=0.05, fault_nan_at=3).to_dict())}])

    assert main(["ablate", "div", "--dir", str(tmp_path), "--seeds", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    # Groups: memory bank (left at the paper's values), lr and fault_nan_at (each a group of its own);
    # four distinct runs: winner, paper point, paper + lr, paper + fault (the last and the winner diverge).
    assert "3 groups: 8 variants x 1 seeds, 4 distinct runs of 6 iterations: 4 to train" in out
    rows = {r["variant"]: r for r in _rows(folder)}
    assert len(rows) == 8
    winner, fault_alone = rows[WINNER], rows[f"{PAPER} with fault_nan_at"]
    for row in (winner, fault_alone):
        assert row["diverged"].startswith("loss is nan at iteration 3") and math.isnan(row["test_miou"])
        assert row["seconds_per_iteration"] > 0  # the cost of the 3 iterations up to its evaluation
    assert rows[PAPER]["diverged"] is None and rows[f"{PAPER} with lr"]["diverged"] is None
    assert rows[f"{WINNER} without memory bank"]["run_id"] == winner["run_id"]
    assert "winner diverged on seed 1000" in out and "(the winner has the paper's values)" in out
    groups = {g["group"]: g for g in summarise(list(rows.values()))["groups"]}
    assert groups["fault_nan_at"]["leave_out"] is None  # nothing to pair: the winner has no score
    assert groups["lr"]["add_in"] is not None

    assert main(["ablate", "div", "--dir", str(tmp_path), "--seeds", "1", "--quiet"]) == 0
    assert "0 to train (4 stored already)" in capsys.readouterr().out
    assert len(raw_rows(folder, "ablate")) == 8 and not repeated(raw_rows(folder, "ablate"), "run_id", "variant")
