"""The storage benchmark's own arithmetic (benchmarks/storage.py): what it prints is read as the
answer to a goal, so its interval must mean what it says."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_storage_benchmarks_interval_brackets_the_median_of_its_rounds(monkeypatch):
    """``benchmarks/storage.py`` prints a 95% bootstrap interval of the paired overhead: it must hold
    the median of the rounds, stay inside their range, narrow to a point when they agree, and be the
    same on every call (seeded), so that two runs of the benchmark compare."""
    spec = importlib.util.spec_from_file_location("storage_benchmark", REPO / "benchmarks" / "storage.py")
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # it sets moto's credentials for itself
    spec.loader.exec_module(benchmark)
    ratios = [1.02, 1.21, 1.09, 1.15, 1.30, 0.98, 1.12, 1.08, 1.11, 1.17]
    text = benchmark.interval(ratios)
    low, high = (float(x) for x in re.fullmatch(r"([+-]\d+\.\d)% to ([+-]\d+\.\d)%", text).groups())
    assert -2.0 <= low < 11.1 < high <= 30.0  # the median of the rounds is +11.1%
    assert high - low < 30.0 and benchmark.interval(ratios) == text
    assert benchmark.interval([1.1] * 6) == "+10.0% to +10.0%"
