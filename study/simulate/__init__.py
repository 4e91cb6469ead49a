"""Search efficiency without training (issue 13): replay search methods on a learning-curve table.

A method is a searcher and a scheduler, the very objects a study builds (``StudySearcher``
on an Optuna sampler, ``PersistentASHA`` or Ray's ``FIFOScheduler``), driven through Ray's
interfaces by a simulated clock instead of Ray Tune. A proposed config is "trained" by
replaying the curve the table predicts for it (``CurveTable.curve_for``: the nearest tabulated
curve, or a Gaussian-process surrogate of the table); the table is ``benchmarks/curves.py``'s,
one row per (study, trial, evaluation).

    table = CurveTable.load("benchmarks/data/digits_curves.parquet", model="surrogate")
    print(validate(table))                  # is the predicted curve a fair stand-in?
    result = run_method("tpe+asha", table, workers=4, samples=60, startup_s=1.0, seed=0)
    result.selected_test, result.incumbent(compute_s=3600)

The clock: N workers; a free worker takes the next suggestion; a trial costs ``startup_s``,
then the tabulated seconds between its evaluations; the scheduler decides at each evaluation,
in simulated-time order (a heap of events). A study ends after ``samples`` trials, or when the
compute spent (the sum of the trials' seconds, start-up included) reaches ``budget_s``.

What it cannot show: the table holds finished, non-diverged runs only, so a region of the
space where training diverges is replayed by its nearest healthy neighbour; and the table's
trials also scored the test split at every evaluation (``eval_test``), so its evaluations cost
a little more than a study's.

Modules: ``curve`` (what a curve is), ``table`` (the curves and the nearest-config rule), ``surrogate`` (the Gaussian
process), ``replay`` (the event loop),
``methods`` (the registered searcher + scheduler pairs), ``dehb`` (DEHB's pair, imported only when it runs),
``efficiency`` (repeats, the target and the figures of the benchmark and of ``semiseg-study simulate``).
"""

from study.simulate.efficiency import Summary, repeat, summarize, target_val
from study.simulate.methods import (METHODS, Method, TopKAfterRung, asha, compare, fifo, method_from_flags, run_method,
                                    top_k)
from study.simulate.replay import (CUT, FINISHED, PAUSED, RUNNING, STOPPED, AnytimePoint, SimResult, TrialRecord,
                                   simulate)
from study.simulate.table import (Curve, CurvePoint, CurveTable, config_id, curve_seconds, distance, measured_startup,
                                  study_curves, validate)

__all__ = ["AnytimePoint", "CUT", "Curve", "CurvePoint", "CurveTable", "FINISHED", "METHODS", "Method", "PAUSED",
           "RUNNING", "STOPPED", "SimResult", "Summary", "TopKAfterRung", "TrialRecord", "asha", "compare",
           "config_id", "curve_seconds", "distance", "fifo", "measured_startup", "method_from_flags", "repeat",
           "run_method", "simulate", "study_curves", "summarize", "target_val", "top_k", "validate"]
