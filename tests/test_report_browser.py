"""The report in a real browser: Debian's Chromium, headless, driven by Playwright.

Opens a rendered report, checks there are no console errors (CSP violations included), that every
section is there with a non-empty plot, table or explorer, that the explorer's filter and sort work, and
saves a screenshot under the test's temp folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broaden.report import report

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PLOT_SECTIONS = ("curves", "trends", "lookalike", "confusion")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's Chromium is not installed (make browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=FLAGS)
        yield b
        b.close()


def test_report_in_chromium(browser, tmp_path):
    from tests.test_report import SECTIONS, make_sim_dir

    html = report(make_sim_dir(tmp_path), tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(html.resolve().as_uri())
    page.wait_for_load_state("load")

    for sid in SECTIONS:
        section = page.locator(f"section#{sid}")
        assert section.count() == 1, sid
        assert section.get_attribute("data-available") == "true", sid
    for sid in PLOT_SECTIONS:
        svgs = page.locator(f"section#{sid} svg.fig")
        assert svgs.count() >= 1, sid
        for i in range(svgs.count()):
            box = svgs.nth(i).bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, (sid, box)
            assert svgs.nth(i).locator("path").count() > 5, sid
    for sid in ("table1", "table2"):
        assert page.locator(f"section#{sid} table.metrics tbody tr").count() >= 4, sid
        assert page.locator(f"section#{sid} td.best").count() >= 1, sid
    thumbs = page.locator("section#explorer img.thumb")
    assert thumbs.count() > 0 and page.evaluate(
        "Array.from(document.querySelectorAll('img.thumb')).every(i => i.complete && i.naturalWidth > 0)")

    visible = "document.querySelectorAll('#explorer-table tbody.case:not([hidden])').length"
    total = page.evaluate(visible)
    assert total == 4
    values = page.eval_on_selector_all("#ex-class option", "os => os.map(o => o.value).filter(v => v !== '')")
    counts = []
    for value in values:
        page.select_option("#ex-class", value)
        counts.append(page.evaluate(visible))
        assert page.inner_text("#ex-count") == f"{counts[-1]} of {total} seeds shown"
    assert sum(counts) == total and min(counts) < total  # the filter changes what is shown and loses nothing
    page.select_option("#ex-class", "")
    strategies = page.eval_on_selector_all("#ex-strategy option", "os => os.map(o => o.value).filter(v => v)")
    page.select_option("#ex-strategy", strategies[0])
    assert 0 < page.evaluate(visible) < total
    page.select_option("#ex-strategy", "")

    order = "Array.from(document.querySelectorAll('#explorer-table tbody.case')).map(b => +b.dataset.d)"
    page.click("button.sort[data-key='d']")
    desc = page.evaluate(order)
    page.click("button.sort[data-key='d']")
    asc = page.evaluate(order)
    assert desc == sorted(desc, reverse=True) and asc == sorted(asc) and desc != asc

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    assert problems == []
    page.close()
