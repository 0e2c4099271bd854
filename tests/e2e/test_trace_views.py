"""The model view and the trace view in headless chromium (one server for the session, no console errors):
a click on a model-view panel opens the head; a trace runs as a background job with progress, a clicked
token traces that position, a head clicked in the contributions map is selected, a bad position is one
message. Screenshots in artifacts/e2e/."""
import os
import re

import pytest
from playwright.sync_api import expect

from .conftest import shot

pytestmark = pytest.mark.e2e

FIRST_ANALYSIS_S = int(os.environ.get("ATTNVIS_E2E_FIRST_S", "400"))   # loads the model, analyses the example
TEXT = "The cat sat on the mat. The cat sat on the"


def analyse_short_text(page, app_url, view):
    """Open `view`, wait for the example analysis, then analyse TEXT (a short text: full maps, flow)."""
    page.goto(f"{app_url}/{view}")
    expect(page.locator(".run-info")).to_have_text(re.compile(r"smollm2-135m · \d+ tokens"),
                                                   timeout=FIRST_ANALYSIS_S * 1000)
    if "· 12 tokens ·" not in page.locator(".run-info").inner_text():
        page.fill("#text-input", TEXT)
        page.click("#analyze-btn")
        expect(page.locator(".run-info")).to_contain_text("· 12 tokens ·", timeout=240_000)
    expect(page.locator(f"#view-{view}")).to_be_visible()


def test_model_view_click_opens_the_head(app_url, app_page):
    page = app_page
    analyse_short_text(page, app_url, "model")
    page.wait_for_selector("#mv-graph .hm image", state="attached")
    expect(page.locator("#mv-note")).to_contain_text("12 tokens: full maps")
    expect(page.locator("#view-model")).to_contain_text("Render budget")
    shot(page, "model-view")
    # panel (layer 4, head 2) = marker 4 * 9 + 2
    page.locator("#mv-graph .scatterlayer .point").nth(4 * 9 + 2).click(force=True)
    page.wait_for_url(re.compile(r"/head\?.*head=4\.2"))
    expect(page.locator("#view-head")).to_be_visible()
    expect(page.locator("#hd-summary")).to_contain_text("head 4.2")


def test_trace_view_job_token_pick_head_pick_and_bad_position(app_url, app_page):
    page = app_page
    analyse_short_text(page, app_url, "trace")
    # the last token is traced by a background job; rollout, flow, lens, contributions, neuron appear
    expect(page.locator("#tr-summary")).to_contain_text("position 11 (", timeout=120_000)
    expect(page.locator("#tr-summary")).to_contain_text("predicts")
    page.wait_for_selector("#tr-rollout .barlayer .point", state="attached")
    assert page.locator("#tr-rollout .barlayer .point").count() == 2 * 12          # rollout and flow bars
    page.wait_for_selector("#tr-lens .hm image", state="attached")
    page.wait_for_selector("#tr-contrib .hm image", state="attached")
    page.wait_for_selector("#tr-neuron .barlayer .point", state="attached")
    expect(page.locator("#view-trace")).to_contain_text("python -m compute trace")
    shot(page, "trace")
    # a clicked token is traced (progress shows while the job runs)
    page.locator("#tr-tokens button").nth(5).click()
    expect(page.locator("#tr-position")).to_have_value("5")
    expect(page.locator("#tr-summary")).to_contain_text("position 5 (", timeout=120_000)
    # a head clicked in the contributions map is selected (URL), and the neuron view follows it
    page.locator("#tr-contrib").scroll_into_view_if_needed()
    box = page.locator("#tr-contrib .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.1)
    page.wait_for_url(re.compile(r"head=\d+\.\d+"))
    head = re.search(r"head=(\d+)\.(\d+)", page.url)
    expect(page.locator("#tr-neuron .gtitle")).to_contain_text(f"layer {head.group(1)} head {head.group(2)}")
    # a chosen key, then a key P cannot see: one message in the figure
    page.locator("#tr-neuron").scroll_into_view_if_needed()
    page.fill("#tr-key", "2")
    page.press("#tr-key", "Enter")
    expect(page.locator("#tr-neuron .gtitle")).to_contain_text("key 2")
    page.fill("#tr-key", "9")
    page.press("#tr-key", "Enter")
    expect(page.locator("#tr-neuron")).to_contain_text("key 9 is not visible from position 5")
    # a position outside the text: one message, the shown trace stays
    page.fill("#tr-position", "99")
    page.press("#tr-position", "Enter")
    expect(page.locator("#tr-error")).to_contain_text("position 99 is outside the text: it has 12 tokens")
    expect(page.locator("#tr-summary")).to_contain_text("position 5 (")
    shot(page, "trace-bad-position")
    # the export block exports the shown trace's numbers
    page.click("text=Export for a paper")
    page.locator('button[id*="export-csv"]').click()
    expect(page.locator('[id*="export-msg"]')).to_contain_text("exported", timeout=30_000)
    expect(page.locator('[id*="export-msg"]')).to_contain_text("tokens")
