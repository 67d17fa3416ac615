"""report.html in headless Chromium: loads offline with no console error, every image decodes,
the headline table is on the first screen. Driven over the DevTools pipe (tests/evaluation/chromium.py).

Outside CI a machine without Chromium skips these tests; in CI (CI=true) a missing Chromium fails.
"""

import os

import pytest
from chromium import Chromium, console_errors, evaluate, find_chromium, load_page, screenshot

pytestmark = pytest.mark.browser

IMAGES = """Promise.all(Array.from(document.images).map(
    img => img.decode().then(() => img.naturalWidth, () => 0)))"""
HEADLINE = """(() => {
    const t = document.getElementById('headline-table');
    if (!t) return null;
    const r = t.getBoundingClientRect();
    const s = getComputedStyle(t);
    return {width: r.width, height: r.height, top: r.top, bottom: r.bottom,
            visible: s.visibility === 'visible' && s.display !== 'none',
            rows: t.tBodies[0].rows.length, viewport: window.innerHeight};
})()"""


@pytest.fixture(scope="module")
def chromium_binary():
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium not installed")
    return binary


def _open(binary, tmp_path, page):
    browser = Chromium(binary, tmp_path / "profile", timeout=90)
    try:
        session = load_page(browser, page, width=1400, height=3000)
    except BaseException:
        browser.close()
        raise
    return browser, session


@pytest.mark.parametrize("view", ["network", "site"])
def test_report_renders_in_chromium(chromium_binary, rendered, tmp_path, view):
    paths = getattr(rendered, view)
    n_images = paths.html.read_text().count("<img ")
    browser, session = _open(chromium_binary, tmp_path, paths.html)
    with browser:
        widths = evaluate(browser, session, IMAGES)
        headline = evaluate(browser, session, HEADLINE)
        png = screenshot(browser, session)
        errors = console_errors(browser)
        urls = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e["method"] == "Network.requestWillBeSent"
        ]
    assert errors == []
    assert len(widths) == n_images > 0 and all(w > 0 for w in widths)
    assert headline["visible"] and headline["width"] > 600 and headline["height"] > 100
    assert 0 <= headline["top"] and headline["bottom"] <= headline["viewport"]
    assert headline["rows"] == 4
    assert urls and all(u.startswith(("file:", "data:")) for u in urls)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    (tmp_path / f"{view}.png").write_bytes(png)
