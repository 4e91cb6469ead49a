"""The report in a real browser: headless Chromium opens report.html from disk and draws every figure.

Needs the Debian packages chromium and chromium-driver (`make test` installs them). Off CI
the test is skipped without them; on CI (CI=true) their absence is a failure, not a skip.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from study.cli import main
from study.previews import PREVIEW_IMAGES
from study.report import SECTIONS
from study.report.page import ABLATION_FIGURES

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

# Per figure: how many traces hold data, how many are drawn, and whether anything failed.
DRAWN = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const size = t => {
    const arrays = [t.x, t.y, t.z, t.values, t.dimensions, t.cells && t.cells.values];
    return Math.max(t.source ? 1 : 0, ...arrays.filter(a => a && a.length !== undefined).map(a => a.length));
  };
  return {id: gd.id, traces: gd.data.length, filled: gd.data.filter(t => size(t) > 0).length,
          drawn: gd.querySelectorAll('.trace, .table, .parcoords, .contour, .hm').length,
          svg: gd.querySelectorAll('.main-svg').length};
});
"""

# The images of the pictures figure as drawn: (href, width, height) of each, and how many image traces it has.
PICTURES = """
const gd = document.getElementById('fig-pictures');
return {traces: gd.data.filter(t => t.type === 'image').length,
        images: Array.from(gd.querySelectorAll('.im image')).map(e => {
          const box = e.getBoundingClientRect();
          return [e.getAttribute('href') || e.getAttribute('xlink:href') || '', box.width, box.height];
        })};
"""


@pytest.fixture(scope="module")
def browser():
    # A skip here is a failure under CI (tests/ci_gate.py): the reason names what is missing.
    if not (CHROMIUM and DRIVER):
        missing = " and ".join(name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not path)
        pytest.skip(f"{missing} not found on PATH (Debian: apt-get install chromium chromium-driver; `make test` "
                    "does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--enable-unsafe-swiftshader", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no Selenium Manager download
    yield driver
    driver.quit()


def _open(browser, page: Path, expected: int) -> list[dict]:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(lambda d: len(d.execute_script(DRAWN)) == expected and
                                     all(f["svg"] for f in d.execute_script(DRAWN)))
    return browser.execute_script(DRAWN)


def test_every_figure_is_drawn_without_a_console_error(browser, small_study, ablated_study, tmp_path):
    # Two copies: a hostile study name, compared with a plain one (the page escapes both); the first
    # one ablated, so that the ablation's figures are drawn too.
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(ablated_study[0], hostile)
    shutil.copytree(small_study, tmp_path / "baseline")
    page = tmp_path / "report.html"
    assert main(["report", hostile.name, "--dir", str(tmp_path), "--compare", "baseline", "-o", str(page)]) == 0
    ids = re.findall(r'<div id="(fig-[\w-]+)" class="plotly-graph-div"', page.read_text())
    assert {f"fig-{key}" for key, *_ in SECTIONS} <= set(ids) and {"fig-compare-best", "fig-compare-table"} <= set(ids)
    assert {f"fig-{key}" for key in ABLATION_FIGURES} <= set(ids)
    assert {"fig-pictures", "fig-confusion"} <= set(ids)  # from the ablation's runs: the study has no retrain

    figures = _open(browser, page, len(ids))
    assert [f["id"] for f in figures] == ids
    for figure in figures:
        assert figure["filled"] >= 1, f"{figure['id']} has no trace with data: {figure}"
        assert figure["drawn"] >= 1, f"{figure['id']} drew nothing: {figure}"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    # The pictures: every image trace drawn from its embedded data URI, with a size on the page.
    pictures = browser.execute_script(PICTURES)
    assert pictures["traces"] == PREVIEW_IMAGES * 4 and len(pictures["images"]) == pictures["traces"]
    for href, width, height in pictures["images"]:
        assert href.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) and width > 20 and height > 20
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0  # the name stayed text
    assert "<img src=x onerror=alert(1)>" in browser.find_element("tag name", "h1").text
    assert browser.find_element("id", "written").text.startswith("Written 20")
    browser.set_window_size(1400, min(browser.execute_script("return document.body.scrollHeight"), 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_browser_check_fails_on_a_page_that_throws_or_has_an_empty_figure(browser, tmp_path):
    """The check above must be able to fail: a broken page trips both of its conditions."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><head><script>" + __import__("plotly.offline", fromlist=["x"]).get_plotlyjs() + "</script></head>"
        "<body><div id='fig-empty'></div><script>Plotly.newPlot('fig-empty', [], {});"
        "throw new Error('boom');</script></body></html>")
    figures = _open(browser, page, 1)
    assert figures[0]["filled"] == 0
    assert any("boom" in entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE")


def test_parallel_coordinates_titles_of_the_default_space_do_not_overlap(browser, tmp_path):
    """Eleven params with long names side by side: each axis title keeps clear of its neighbours."""
    import json

    import optuna
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    from search_spaces import get_space
    from study.report import StudyData
    from study.report.sweep import parallel_coordinates

    space, study = get_space("default"), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials, params = [], {}
    for number in range(6):
        trial = study.ask()
        space.suggest(trial)
        params.update(trial.distributions)
        trials.append({"trial_id": f"t{number}", "status": "finished", "best_val_miou": 0.1 * number,
                       "params": json.dumps(trial.params)})
    fig = parallel_coordinates(StudyData("s", tmp_path, trials, [], params))
    axes = len(fig.data[0].dimensions)  # the params every trial sampled, and the score
    assert axes >= 11
    page = tmp_path / "parcoords.html"
    page.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body style='width:1300px'>"
                    + pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id="fig-parallel")
                    + "</body></html>")
    _open(browser, page, 1)
    boxes = browser.execute_script("""return Array.from(document.querySelectorAll('#fig-parallel .axis-title'))
        .map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; });""")
    assert len(boxes) == axes
    for (left, right, top, bottom), (left2, right2, top2, bottom2) in zip(boxes, boxes[1:]):
        assert right < left2 or bottom < top2 or bottom2 < top, (boxes, "two axis titles overlap")
