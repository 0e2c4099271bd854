"""The corpus, Q/K embedding (+ context search) and side-by-side pages in headless chromium, on 3 short
texts: each page runs its job, draws its figures and exports; no console errors (app_page checks)."""
import json
import re

import pytest
from playwright.sync_api import expect

from .conftest import shot
from .test_app_e2e import ANALYSIS_S, FIRST_ANALYSIS_S, drawn, open_view

pytestmark = pytest.mark.e2e

TEXTS = [("prose-a", "The lighthouse keeper climbed the stairs every evening with a can of oil."),
         ("dialog-b", "Customer: My kettle stopped working.\nAssistant: I'm sorry to hear that."),
         ("code-c", "def mean(xs):\n    return sum(xs) / len(xs)\n")]


def analysed(page, timeout_s=FIRST_ANALYSIS_S):
    expect(page.locator(".run-info")).to_have_text(re.compile(r"smollm2-135m · \d+ tokens"), timeout=timeout_s * 1000)


def run_corpus(page, tmp_path):
    f = tmp_path / "three.jsonl"
    f.write_text("\n".join(json.dumps({"id": t, "text": x}) for t, x in TEXTS) + "\n")
    page.set_input_files("#cp-upload input[type=file]", str(f))
    page.click("#cp-source input[value=upload]")
    expect(page.locator("#cp-upload-info")).to_contain_text("three.jsonl: 3 texts")
    page.click("#cp-run")
    drawn(page, "cp-grid", ".scatterlayer .point")


def test_corpus_page_upload_run_and_open_text(app_url, app_page, tmp_path):
    page = app_page
    page.goto(app_url + "/corpus")
    analysed(page)
    # a bad file: one message naming the line, nothing else changes
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": }\n')
    page.set_input_files("#cp-upload input[type=file]", str(bad))
    page.click("#cp-source input[value=upload]")
    expect(page.locator("#cp-upload-info")).to_contain_text("bad.jsonl line 2: not valid JSON")
    run_corpus(page, tmp_path)
    expect(page.locator("#cp-summary")).to_contain_text("3 texts on smollm2-135m", timeout=ANALYSIS_S * 1000)
    drawn(page, "cp-stability", ".hm image")
    drawn(page, "cp-dist", ".boxlayer .point")
    expect(page.locator("#page-content details.export")).to_contain_text("Export for a paper")
    shot(page, "corpus")
    with page.expect_download() as dl:
        page.locator("details.export summary").click()
        page.click("button:has-text('Data CSV')")
    assert dl.value.suggested_filename.endswith("_corpus_grid.data.csv")
    # a click on a text's point opens it as the current analysis
    page.locator("#cp-dist .boxlayer .point").first.click(force=True)
    expect(page.locator("#cp-open")).to_contain_text("opening text")
    expect(page.locator("#text-input")).to_have_value(re.compile(r"lighthouse keeper|kettle|def mean"),
                                                      timeout=ANALYSIS_S * 1000)
    open_view(page, "overview")
    expect(page.locator(".run-info")).to_contain_text("smollm2-135m")


def test_embedding_page_scatter_and_search(app_url, app_page, tmp_path):
    page = app_page
    page.goto(app_url + "/corpus?head=3.1")
    analysed(page, ANALYSIS_S)
    run_corpus(page, tmp_path)                         # cached by the previous test: instant
    open_view(page, "embedding")
    page.click("#em-run")
    expect(page.locator("#em-note")).to_contain_text("PCA of", timeout=ANALYSIS_S * 1000)
    drawn(page, "em-scatter", ".gl-container canvas")
    page.click("#em-source input[value=corpus]")
    page.click("#em-run")
    expect(page.locator("#em-note")).to_contain_text("three.jsonl", timeout=ANALYSIS_S * 1000)
    shot(page, "embedding")
    page.click("#cs-token")
    page.locator(".dash-dropdown-content .dash-dropdown-option").nth(2).click()
    page.click("#cs-run")
    drawn(page, "cs-table", ".table")
    expect(page.locator("#cs-table")).to_contain_text("similarity", timeout=ANALYSIS_S * 1000)
    shot(page, "context-search")


def test_side_by_side_two_texts(app_url, app_page):
    page = app_page
    page.goto(app_url + "/sidebyside")
    analysed(page, ANALYSIS_S)
    page.click("#sb-mode input[value=texts]")
    page.fill("#sb-text-b", "An entirely different second text, about rivers and <tags> & such.")
    page.click("#sb-run")
    expect(page.locator("#sb-summary")).to_contain_text("text B", timeout=ANALYSIS_S * 1000)
    drawn(page, "sb-delta", ".hm image")
    drawn(page, "sb-map-a", ".hm image")
    drawn(page, "sb-map-b", ".hm image")
    expect(page.locator("#sb-match")).to_contain_text("different tokens")
    shot(page, "sidebyside")

