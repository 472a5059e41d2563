"""The report in a real headless Chromium: it loads clean, every image decodes, the controls work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnlens.report import write_report
from test_report import CLASSES, EVIL, TINY, methods, tiny_inputs, write_run_files  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture
def report(tmp_path: Path, methods: ModuleType) -> Path:  # noqa: F811
    write_run_files(tmp_path / "run")
    return write_report(tiny_inputs(run_dir=tmp_path / "run"), tmp_path / "report", options=TINY)


@pytest.fixture
def browser_page(report: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """(page opened from file://, console errors and page errors, dialogs that opened)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            dialogs: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            yield page, errors, dialogs
        finally:
            browser.close()


def visible(page: Any, selector: str) -> int:
    return page.eval_on_selector_all(selector, "els => els.filter(e => e.offsetParent !== null).length")


def test_page_loads_clean_and_every_image_decodes(browser_page: tuple, tmp_path: Path) -> None:
    page, errors, dialogs = browser_page
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(images) > 100 and all(done and width > 0 for done, width in images)
    requests = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in requests if not r.startswith("data:")] == []  # nothing fetched: no network, no side files
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot))
    assert pixels.shape[0] > 2000 and pixels.std() > 10  # a long page with something drawn on it
    assert errors == [] and dialogs == []


def test_class_chooser_shows_one_class_and_names_are_text(browser_page: tuple) -> None:
    page, errors, dialogs = browser_page
    blocks = visible(page, ".class-block")
    assert blocks == len(CLASSES)
    page.select_option("#class-select", "1")
    assert visible(page, ".class-block") == 1 and visible(page, ".class-row") == 1
    assert page.inner_text(".class-block:not(.is-hidden) h3") == EVIL  # the tag shows as text
    shown = page.eval_on_selector_all("[data-class]", "els => els.filter(e => e.offsetParent !== null)"
                                                     ".map(e => e.getAttribute('data-class'))")
    assert shown and set(shown) == {"1"}
    assert EVIL in page.inner_text("#filter-status")
    page.select_option("#class-select", "all")
    assert visible(page, ".class-block") == blocks
    assert errors == [] and dialogs == []  # the class named <script>alert(1)</script> never ran


def test_method_chooser_shows_one_method(browser_page: tuple) -> None:
    page, errors, _ = browser_page
    all_figures = visible(page, "#explanations figure")
    page.select_option("#method-select", "grad-cam")
    methods = page.eval_on_selector_all("#explanations figure", "els => els.filter(e => e.offsetParent !== null)"
                                                               ".map(e => e.getAttribute('data-method'))")
    assert set(methods) == {None, "grad-cam"} and len(methods) < all_figures
    assert visible(page, "#explanations figure[data-method='saliency']") == 0
    assert visible(page, "#class_average td[data-method='grad-cam']") == len(CLASSES)
    assert visible(page, "#class_average td[data-method='saliency']") == 0
    page.select_option("#method-select", "all")
    assert visible(page, "#explanations figure") == all_figures
    assert errors == []


def test_opacity_slider_changes_the_overlays(browser_page: tuple) -> None:
    page, errors, _ = browser_page
    opacity = "document.querySelector('img.layer') && getComputedStyle(document.querySelector('img.layer')).opacity"
    assert float(page.evaluate(opacity)) == pytest.approx(0.7)
    page.locator("#opacity").fill("0.2")
    assert float(page.evaluate(opacity)) == pytest.approx(0.2)
    assert page.inner_text("#opacity-value") == "20%"
    base = "getComputedStyle(document.querySelector('img.base')).opacity"
    assert float(page.evaluate(base)) == 1.0  # only the heat layer fades
    assert errors == []


def test_clicking_an_image_opens_a_larger_view(browser_page: tuple) -> None:
    page, errors, _ = browser_page
    button = page.locator("#explanations button.zoom").nth(3)
    title = button.get_attribute("data-title")
    small = button.locator("img.base").bounding_box()["width"]
    button.click()
    assert page.is_visible("#lightbox")
    assert page.inner_text(".lightbox-caption") == title
    assert page.locator(".lightbox-stage img.base").bounding_box()["width"] > 3 * small
    page.keyboard.press("ArrowRight")
    assert page.inner_text(".lightbox-caption") != title
    page.keyboard.press("Escape")
    assert not page.is_visible("#lightbox")
    assert errors == []


#: Rows of the layer table (in its scroll box, clear of the page's sticky bar and the table's sticky
#: header) on which something else is drawn.
COVERED_ROWS = """() => {
  const box = document.querySelector('#model .scroll').getBoundingClientRect();
  const head = document.querySelector('#model thead th').getBoundingClientRect();  // sticky: the cell moves
  const bar = document.querySelector('.toolbar').getBoundingClientRect();
  const out = [];
  for (const r of document.querySelectorAll('#model tbody tr, #model tfoot tr')) {
    const b = r.getBoundingClientRect();
    if (b.top < Math.max(box.top, head.bottom, bar.bottom) || b.bottom > box.bottom) continue;  // not wholly in view
    const el = document.elementFromPoint(b.left + 8, b.top + b.height / 2);
    if (!r.contains(el)) out.push(r.innerText.split('\\t')[0]);
  }
  return out;
}"""


def test_the_layer_table_hides_no_row_under_its_totals(browser_page: tuple) -> None:
    page, errors, _ = browser_page
    page.add_style_tag(content="#model .scroll { max-height: 9rem !important; }")  # shorter than the table
    page.eval_on_selector("#model .scroll", "el => el.scrollIntoView({block: 'center'})")
    assert page.eval_on_selector("#model .scroll", "el => el.scrollHeight > el.clientHeight")
    for where in ("0", "el.scrollHeight / 2", "el.scrollHeight"):
        page.eval_on_selector("#model .scroll", f"el => {{ el.scrollTop = {where}; }}")
        assert page.evaluate(COVERED_ROWS) == [], where
    last = page.eval_on_selector("#model tbody tr:last-child", "r => r.getBoundingClientRect().bottom")
    total = page.eval_on_selector("#model tfoot tr:first-child", "r => r.getBoundingClientRect().top")
    assert last <= total + 0.5  # at the end the last layer sits above the totals, not under them
    assert errors == []
