"""tests/ci_gate.py in a pytest of its own: under CI a skip fails and names what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent

CASES = '''
import pytest

def test_plain_skip():
    pytest.skip("chromium not found on PATH")

def test_importorskip():
    pytest.importorskip("no_such_module_semiseg", reason="no_such_module_semiseg is missing")

@pytest.fixture
def server():
    pytest.skip("PostgreSQL's initdb not found")

def test_skip_in_a_fixture(server):
    pass

@pytest.mark.skipif(True, reason="dehb is not installed")
def test_skipif_mark():
    pass

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_gpu_may_skip():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfail_is_left_alone():
    assert False

def test_passes():
    pass
'''

SKIPPED_MODULE = 'import pytest\npytest.importorskip("no_such_module_semiseg", reason="a whole module skipped")\n'


def _outcomes(folder: Path, ci: str | None) -> tuple[dict[str, tuple[str, str]], str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    xml = folder / f"junit-{ci}.xml"
    # --continue-on-collection-errors: the module skipped at collection fails under CI, as the others do.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}",
                           "--continue-on-collection-errors",
                           str(folder)], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    seen = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = [child for child in case if child.tag in ("skipped", "failure", "error")]
        kind = kinds[0].tag if kinds else "passed"
        seen[case.get("name") or case.get("classname")] = (
            kind, (kinds[0].get("message", "") + "\n" + (kinds[0].text or "")) if kinds else "")
    return seen, done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gate")
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    (folder / "conftest.py").write_text(f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
                                        "from ci_gate import pytest_make_collect_report, pytest_runtest_makereport\n")
    (folder / "test_cases.py").write_text(CASES)
    (folder / "test_skipped_module.py").write_text(SKIPPED_MODULE)
    return folder


@pytest.mark.parametrize("ci", ["true"])
def test_under_ci_a_skip_fails_naming_what_is_missing_and_only_gpu_tests_skip(project, ci):
    seen, out = _outcomes(project, ci)
    # A skip in the test fails it; one in its setup (a fixture, a skipif mark) is an error: neither passes.
    for name, missing in (("test_plain_skip", "chromium not found on PATH"),
                          ("test_importorskip", "no_such_module_semiseg is missing"),
                          ("test_skip_in_a_fixture", "PostgreSQL's initdb not found"),
                          ("test_skipif_mark", "dehb is not installed")):
        kind, message = seen[name]
        assert kind in ("failure", "error") and missing in message and "on CI a skip is a failure" in message, (
            name, seen)
    assert seen["test_gpu_may_skip"][0] == "skipped", seen
    assert seen["test_xfail_is_left_alone"][0] == "skipped" and seen["test_passes"][0] == "passed", seen
    assert any(kind == "error" and "a whole module skipped" in message for kind, message in seen.values()), seen
    assert "SKIPPED" in out and "needs a CUDA device" in out  # the summary lists what skipped


@pytest.mark.parametrize("ci", [None, "false"])
def test_off_ci_the_same_tests_skip_with_their_reason(project, ci):
    seen, out = _outcomes(project, ci)
    for name in ("test_plain_skip", "test_importorskip", "test_skip_in_a_fixture", "test_skipif_mark",
                 "test_gpu_may_skip"):
        assert seen[name][0] == "skipped", (name, seen)
    assert "chromium not found on PATH" in out and "dehb is not installed" in out  # -rs: each with its reason
