"""Issue 15 item 6 in chromium: the app works under its Content-Security-Policy (no inline script but
Dash's hashed ones; 'unsafe-eval' only for plotly's WebGL shaders) with 0 console errors and 0 CSP violations. Its own
browser context: the shared one bypasses the CSP for playwright's string predicates (conftest.py)."""
import pytest

from .test_app_e2e import FIRST_ANALYSIS_S, drawn, open_view, wait_overview

pytestmark = pytest.mark.e2e


def test_app_runs_under_the_csp(app_url, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=False)
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
    try:
        resp = page.goto(app_url)
        csp = resp.headers["content-security-policy"]
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0] and "frame-ancestors 'none'" in csp
        wait_overview(page, FIRST_ANALYSIS_S)
        page.locator("#ov-graph .scatterlayer .point").nth(10).click(force=True)
        for view, graph, what in (("head", "hd-map", ".hm image"), ("head", "hd-token-graph", ".scatterlayer .js-line"),
                                  ("sinks", "sk-map", ".hm image"), ("entropy", "en-map", ".hm image"),
                                  ("graphs", "gr-heads", ".scatterlayer .point")):
            open_view(page, view)
            drawn(page, graph, what)                 # heatmaps are data: images
        open_view(page, "generate")
        open_view(page, "variants")
        page.wait_for_timeout(1000)
        assert page.evaluate("window.__csp") == []
        assert errors == []
        # the app refuses to be framed (chromium logs that refusal as an error: another page)
        other = context.new_page()
        other.set_content(f'<iframe id="f" src="{app_url}/overview"></iframe>')
        other.wait_for_timeout(1500)
        assert other.frame_locator("#f").locator("#react-entry-point").count() == 0
    finally:
        context.close()
