"""Issue 15 item 6 in chromium: the app works under its Content-Security-Policy (no 'unsafe-eval', no
inline script but Dash's hashed renderer line) with 0 console errors and 0 CSP violations."""
import pytest

from .test_app_e2e import FIRST_ANALYSIS_S, drawn, open_view, wait_overview

pytestmark = pytest.mark.e2e


def test_app_runs_under_the_csp(app_url, app_page):
    page = app_page
    page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                         "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
    resp = page.goto(app_url)
    csp = resp.headers["content-security-policy"]
    assert "'unsafe-eval'" not in csp and "frame-ancestors 'none'" in csp
    wait_overview(page, FIRST_ANALYSIS_S)
    page.locator("#ov-graph .scatterlayer .point").nth(10).click(force=True)
    open_view(page, "head")
    drawn(page, "hd-map", ".hm image")                   # heatmaps are data: images
    drawn(page, "hd-token-graph", ".scatterlayer .js-line")
    open_view(page, "sinks")
    drawn(page, "sk-map", ".hm image")
    assert page.evaluate("window.__csp") == []
    # the app refuses to be framed: in another tab (chromium logs the refusal as an error there)
    other = page.context.new_page()
    other.set_content(f'<iframe id="f" src="{app_url}/overview"></iframe>')
    other.wait_for_timeout(1500)
    assert other.frame_locator("#f").locator("#react-entry-point").count() == 0
    other.close()
