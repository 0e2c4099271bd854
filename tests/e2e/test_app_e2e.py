"""The app in headless chromium: load, analyse, click a head, every view, long-text zoom, errors,
generation and variants. Screenshots in artifacts/e2e/."""
import os
import re

import pytest
from playwright.sync_api import expect

from .conftest import shot

pytestmark = pytest.mark.e2e

VIEWS = ("overview", "head", "sinks", "basin", "entropy", "graphs", "variants", "generate")
FIRST_ANALYSIS_S = int(os.environ.get("ATTNVIS_E2E_FIRST_S", "400"))   # loads the model, analyses the example
ANALYSIS_S = 240


def wait_overview(page, timeout_s=ANALYSIS_S):
    page.wait_for_selector("#ov-graph .scatterlayer .point", timeout=timeout_s * 1000)


def drawn(page, graph_id, what=".main-svg"):
    page.wait_for_selector(f"#{graph_id} {what}", state="attached")


def open_view(page, view):
    page.click(f"#nav-{view}")
    expect(page.locator(f"#view-{view}")).to_be_visible()
    expect(page.locator(f"#nav-{view}")).to_have_class(re.compile("tab-active"))


def run_info(page):
    return page.locator(".run-info").inner_text()


def test_landing_click_head_and_every_view(app_url, app_page):
    page = app_page
    page.goto(app_url)
    # a status line from the first second (cold start), one view's cards only, never a bare "..."
    expect(page.locator(".run-info")).to_have_text(re.compile(r"starting|analysing|smollm2"), timeout=5_000)
    expect(page.locator(".view")).to_have_count(1)
    wait_overview(page, FIRST_ANALYSIS_S)
    assert re.search(r"smollm2-135m · \d+ tokens · 30×9 heads", run_info(page))
    shot(page, "overview")
    # click a glyph: the URL and every view follow the selected head
    page.locator("#ov-graph .scatterlayer .point").nth(100).click(force=True)
    page.wait_for_url(re.compile(r"head=\d+\.\d+"))
    head = re.search(r"head=(\d+\.\d+)", page.url).group(1)
    open_view(page, "head")
    expect(page.locator("#hd-summary")).to_contain_text(f"head {head}")
    drawn(page, "hd-map", ".hm image")                  # the full map (a short text)
    drawn(page, "hd-received", ".barlayer .point")
    drawn(page, "hd-token-graph", ".scatterlayer .js-line")
    shot(page, "head")
    page.click("#hd-scale input[value=split]")
    page.wait_for_url(re.compile(r"scale=split"))
    page.wait_for_function("document.querySelectorAll('#hd-map .hm image').length == 2")
    shot(page, "head-split-scale")
    open_view(page, "sinks")
    drawn(page, "sk-map", ".hm image")
    expect(page.locator("#sk-table")).to_contain_text("tau")
    shot(page, "sinks")
    open_view(page, "basin")
    expect(page.locator("#view-basin")).to_contain_text("basin: not available")
    open_view(page, "entropy")
    drawn(page, "en-map", ".hm image")
    expect(page.locator("#en-profile")).to_contain_text(f"head {head}")
    shot(page, "entropy")
    open_view(page, "graphs")
    drawn(page, "gr-heads", ".scatterlayer .point")
    expect(page.locator("#gr-info")).to_contain_text("communities")
    shot(page, "graphs")
    open_view(page, "generate")
    expect(page.locator("#gn-text")).to_contain_text("no generated continuation")
    open_view(page, "variants")
    shot(page, "variants-empty")


def test_url_reproduces_the_view(app_url, app_page):
    page = app_page
    page.goto(app_url)
    wait_overview(page)
    url = page.url.split("?")[1] if "?" in page.url else ""
    a = re.search(r"a=([0-9a-f]+)", url).group(1)
    page.goto(f"{app_url}/entropy?a={a}&head=7.2&metric=entropy_norm_mean")
    expect(page.locator("#view-entropy")).to_be_visible()
    expect(page.locator("#en-profile")).to_contain_text("head 7.2")
    page.click("#nav-overview")
    expect(page.locator("#ov-side")).to_contain_text("Head 7.2")
    expect(page.locator("#ov-graph")).to_contain_text("normalised entropy")


def test_preset_analysis_basin_and_long_text_zoom(app_url, app_page):
    """The documents preset is longer than the server's full-map limit (160 tokens here): the head
    view shows a pooled map and a click loads a full-resolution block."""
    page = app_page
    page.goto(app_url)
    wait_overview(page)
    before = run_info(page)
    page.click("#preset-basin")
    expect(page.locator("#text-input")).to_have_value(re.compile("Document \\[1\\]"))
    page.click("#analyze-btn")
    expect(page.locator("#progress-wrap")).to_be_visible(timeout=15_000)
    expect(page.locator(".run-info")).not_to_have_text(before, timeout=ANALYSIS_S * 1000)
    n = int(re.search(r"(\d+) tokens", run_info(page)).group(1))
    assert n > 160
    open_view(page, "basin")
    expect(page.locator("#bs-text .item")).to_have_count(5)
    drawn(page, "bs-curves", ".scatterlayer .js-line")
    page.locator("#bs-important input").nth(3).check()
    expect(page.locator("#bs-order")).to_contain_text("suggested order")
    shot(page, "basin")
    open_view(page, "head")
    expect(page.locator("#hd-note")).to_contain_text("pooled")
    box = page.locator("#hd-map .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7)
    expect(page.locator("#hd-zoom")).to_be_visible(timeout=ANALYSIS_S * 1000)
    drawn(page, "hd-zoom", ".hm image")
    expect(page.locator("#hd-zoom")).to_contain_text("full resolution")
    shot(page, "head-long-zoom")


def test_errors_show_in_the_page_and_results_stay(app_url, app_page):
    page = app_page
    page.goto(app_url)
    wait_overview(page)
    info = run_info(page)
    page.fill("#text-input", "   ")
    page.click("#analyze-btn")
    expect(page.locator("#error-box")).to_contain_text("the text is empty", timeout=ANALYSIS_S * 1000)
    assert run_info(page) == info
    assert page.locator("#ov-graph .scatterlayer .point").count() > 200
    # a running analysis can be cancelled; nothing changes (a long text with probes: minutes of work)
    page.fill("#text-input", "")
    page.goto(page.url)                                 # the panel shows the shown result's text again
    wait_overview(page)
    shown_text = page.locator("#text-input").input_value()
    assert shown_text.strip()
    page.click("#preset-basin")
    long_text = page.locator("#text-input").input_value()
    page.fill("#text-input", "\n\n".join([long_text] * 6))
    page.click(".options summary")                      # the options panel starts folded
    page.click("#opt-probes input[value=induction]")    # (the basin preset ticked retrieval)
    page.click("#opt-importance input[value=on]")       # gradients too: far longer than the cancel takes
    expect(page.locator("#opt-probes input[value=retrieval]")).to_be_checked()
    page.click("#analyze-btn")
    expect(page.locator("#cancel-btn")).to_be_enabled(timeout=30_000)
    expect(page.locator("#progress-msg")).not_to_be_empty(timeout=30_000)
    page.click("#cancel-btn")
    expect(page.locator("#progress-wrap")).to_be_hidden(timeout=30_000)
    assert run_info(page) == info
    # a notice says so, and the panel shows the text of the result on screen again
    expect(page.locator("#notice-box")).to_contain_text("cancelled; the previous result is shown")
    expect(page.locator("#text-input")).to_have_value(shown_text)
    stale = page.locator("#progress-msg").text_content()
    page.fill("#model-path", "/nonexistent/model-folder")
    page.fill("#text-input", "Hello there.")
    page.click("#analyze-btn")
    expect(page.locator("#error-box")).to_contain_text("/nonexistent/model-folder", timeout=ANALYSIS_S * 1000)
    # that run failed at once: its progress line is its own (the fresh start, or loading the model it
    # could not find), never the cancelled run's last message; the notice of the cancel is gone
    now = page.locator("#progress-msg").text_content()
    assert now != stale and (now.startswith("starting") or "/nonexistent/model-folder" in now), (stale, now)
    expect(page.locator("#notice-box")).to_be_empty()
    shot(page, "error")


def test_generate_continuation(app_url, app_page):
    page = app_page
    page.goto(app_url)
    wait_overview(page)
    page.fill("#text-input", "The three primary colours are")
    open_view(page, "generate")
    page.fill("#gn-tokens", "8")
    page.click("#gn-run")
    expect(page.locator("#gn-text .generated")).to_be_visible(timeout=ANALYSIS_S * 1000)
    drawn(page, "gn-map", ".hm image")
    expect(page.locator("#gn-table")).to_contain_text("generated token")
    expect(page.locator("#gn-table")).not_to_contain_text("&lt;")
    assert "+8 generated" in run_info(page) or "generated" in run_info(page)
    # the continuation is shown apart; the panel keeps the prompt until asked to take both
    expect(page.locator("#gn-text")).to_contain_text("continuation")
    expect(page.locator("#text-input")).to_have_value("The three primary colours are")
    page.click("#gn-use")
    expect(page.locator("#text-input")).to_have_value(re.compile(r"^The three primary colours are.+", re.S))
    shot(page, "generate")


def test_variant_comparison(app_url, app_page):
    from visapp import service
    reason = service.variants_available()
    if reason:
        pytest.skip(reason)
    page = app_page
    page.goto(app_url)
    wait_overview(page)
    open_view(page, "variants")
    page.fill("#vr-layers", "3,20")
    page.click("#vr-run")
    expect(page.locator("#vr-table table")).to_be_visible(timeout=ANALYSIS_S * 1000)
    drawn(page, "vr-maps", ".hm image")
    drawn(page, "vr-diff", ".hm image")
    drawn(page, "vr-bars", ".barlayer .point")
    # the difference map shows the variant picked for it
    page.click("#vr-diff-pick")
    options = page.locator(".dash-dropdown-content .dash-dropdown-option")   # the open list (a popover)
    expect(options).to_have_count(2)
    second = options.nth(1).inner_text()
    options.nth(1).click()
    expect(page.locator("#vr-diff")).to_contain_text(f"{second} − softmax", timeout=60_000)
    shot(page, "variants")


def test_lasting_links_rerun_or_say_why(app_url, app_page, monkeypatch):
    """A link to an analysis this server never saw: with its request stored (an expired result), the
    page shows progress of the re-run within 10 s and then the view; with nothing stored, a one-line
    message within 10 s. Never only 'analysing...'."""
    from .conftest import SERVER
    page = app_page
    unknown = "0123456789abcdef01234567"
    page.goto(f"{app_url}/head?a={unknown}&model=smollm2-135m")
    expect(page.locator("#notice-box")).to_contain_text("this link's analysis is not stored here; press Analyze "
                                                        "to run it again", timeout=10_000)
    expect(page.locator("#hd-summary")).to_contain_text("not stored here")
    # the server's store holds the request (as after an analysis whose result expired) but no result
    monkeypatch.setenv("ATTNVIS_CACHE_DIR", str(SERVER["log"].parent))
    monkeypatch.setenv("ATTNVIS_APP_FULL_MAP_MAX", "160")          # the server's setting: same key
    from visapp import service, state
    state.reset()
    try:
        req = service.make_request(text="A link from last week: the cat sat on the mat, then the dog sat too.")
        state.store().set(f"{req.key()}:req", req.to_dict(), timeout=0)
        assert not service.is_cached(req.key())
    finally:
        state.reset()
    page.goto(f"{app_url}/head?a={req.key()}&model=smollm2-135m&head=4.1")
    # within 10 s: the model-loading notice (a fresh server) or the re-run's progress
    expect(page.locator("#notice-box .notice, #progress-wrap").first).to_be_visible(timeout=10_000)
    expect(page.locator(".panel")).to_contain_text(re.compile(r"loading the model|starting…|layer \d+/\d+"),
                                                   timeout=10_000)
    expect(page.locator("#hd-summary")).to_contain_text("head 4.1", timeout=ANALYSIS_S * 1000)
    assert f"a={req.key()}" in page.url                              # the same link, now answered
    drawn(page, "hd-map", ".hm image")
    shot(page, "lasting-link")
