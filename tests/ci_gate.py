"""On CI a test may not skip: a skip there is a failure that names what was missing.

Off CI a test whose component is missing (Chromium, PostgreSQL, moto, dehb, unshare as root, an
optional import) skips with a reason, and pytest's ``-ra`` summary lists it. Under CI (``CI``
set and not false: ``.ci/run`` sets ``CI=true``; GitHub, GitLab and most others set it too) the
same skip is turned into a failure with the same reason, so a CI machine that lacks a component
cannot report green without running its test. Only tests marked ``gpu`` may skip there (CI
machines have no GPU), and their reason says so.

One mechanism for every kind of skip (``pytest.skip`` in a test or fixture, ``importorskip``,
``skipif`` marks, a module-level skip at collection), so no test has to remember it. xfail is
left alone: it is an expected failure, not a missing component.
"""

from __future__ import annotations

import os

import pytest

MAY_SKIP_ON_CI = "gpu"  # the marker of the tests CI lets skip


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _reason(report: pytest.BaseReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_instead(report: pytest.BaseReport) -> None:
    report.outcome = "failed"
    report.longrepr = (f"CI={os.environ.get('CI')}: skipped, and on CI a skip is a failure (only tests marked "
                       f"'{MAY_SKIP_ON_CI}' may skip): {_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and on_ci() and not hasattr(report, "wasxfail")
            and item.get_closest_marker(MAY_SKIP_ON_CI) is None):
        _fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and on_ci() and collector.get_closest_marker(MAY_SKIP_ON_CI) is None:
        _fail_instead(report)
