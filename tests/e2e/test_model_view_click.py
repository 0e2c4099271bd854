"""The model view in a real browser (Debian chromium): a click anywhere on a panel, not only its centre,
hands that panel's [layer, head] to plotly_click (what the app's callback reads)."""
import numpy as np
import plotly.io as pio
import pytest

from visapp.figures.model_view import model_view

pytestmark = pytest.mark.e2e


def test_click_on_a_panel_corner_selects_its_head(tmp_path, browser):
    """Uses the session's browser (tests/e2e/conftest.py: Debian chromium), like every e2e test."""
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((30, 9, 12, 12)) + 0.01)
    fig = model_view(maps=a / a.sum(-1, keepdims=True), n_tokens=12)
    page_file = tmp_path / "mv.html"
    page_file.write_text(pio.to_html(fig, include_plotlyjs=True, full_html=True, div_id="mv"))
    step, m = 13, 12
    context = browser.new_context(viewport={"width": 900, "height": 2200})
    page = context.new_page()
    try:
        page.goto(page_file.as_uri())
        page.wait_for_function("document.getElementById('mv') && document.getElementById('mv')._fullLayout")
        page.evaluate("""() => { window.clicked = null; document.getElementById('mv')
                           .on('plotly_click', e => { window.clicked = e.points[0].customdata; }); }""")
        for layer, head, dx, dy in ((2, 3, 0.5, 0.5), (17, 8, m - 1, 0.5), (29, 0, 0.5, m - 1), (5, 5, 6, 6)):
            xy = page.evaluate("""([x, y]) => { const gd = document.getElementById('mv'), L = gd._fullLayout,
                                      box = gd.getBoundingClientRect();
                                   return [box.left + L.xaxis._offset + L.xaxis.l2p(x),
                                           box.top + L.yaxis._offset + L.yaxis.l2p(y)]; }""",
                               [head * step + dx - 0.5, layer * step + dy - 0.5])
            page.evaluate("() => { window.clicked = null; }")
            page.wait_for_timeout(400)              # two clicks within 300 ms are plotly's double click
            page.mouse.click(*xy)
            page.wait_for_function("window.clicked !== null", timeout=5000)
            assert page.evaluate("window.clicked") == [layer, head], (layer, head, dx, dy)
    finally:
        context.close()
