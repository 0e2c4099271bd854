"""Paper export without a model: the app's real figure builders on small hand-made matrices, restyled
and rendered by kaleido with the system Chromium. Checks the files themselves: PDFs parse and embed
their fonts, SVGs are XML with text as <text>, PNGs are exactly width x DPI pixels, a_ij labels
render offline, and concurrent exports never mix up figures (the lock)."""
import io
import re
import struct
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pytest

SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def ex():
    from visapp import export
    yield export
    export.shutdown()              # close the browser before the interpreter removes its profile dir


def causal_map(n: int, seed: int = 0) -> np.ndarray:
    """A row-stochastic causal attention map with a sink on token 0."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, n))
    s[:, 0] += 3.0
    s[np.triu_indices(n, 1)] = -np.inf
    a = np.exp(s - s.max(1, keepdims=True))
    return a / a.sum(1, keepdims=True)


TOKENS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " was", " warm", "<b>", "\n"]


def heatmap_fig(ex, opts, scale="log"):
    from visapp.figures import attention_heatmap, token_labels
    labels = token_labels(TOKENS)
    raw = attention_heatmap(causal_map(len(TOKENS)), labels, labels, scale=scale, title="layer 3 head 4",
                            template=ex.paper_template_name(opts.font, opts.size_pt))
    return raw, ex.paper_figure(raw, opts, 0.95)


def grid_fig(ex, opts, title="grid"):
    from visapp.figures import head_grid
    v = np.linspace(0, 1, 6 * 4).reshape(6, 4)
    roles = [["sink", "local", "broad", "mixed"]] * 6
    raw = head_grid(v, metric="sink mass", roles=roles, selected=(2, 1), title=title,
                    template=ex.paper_template_name(opts.font, opts.size_pt))
    return raw, ex.paper_figure(raw, opts, 1.0)


def svg_root(data: bytes) -> ET.Element:
    return ET.fromstring(data.decode("utf-8"))


def texts(root) -> list[str]:
    return ["".join(t.itertext()).replace("\u200b", "") for t in root.iter(f"{SVG_NS}text")]


def pdf_text_sizes(data: bytes) -> list[float]:
    """Effective size in pt of every text run on page 1 (font size x text matrix x CTM)."""
    import math
    from pypdf import PdfReader

    def mul(m, n):
        a, b, c, d, e, f = m
        A, B, C, D, E, F = n
        return [a * A + b * C, a * B + b * D, c * A + d * C, c * B + d * D, e * A + f * C + E, e * B + f * D + F]
    out = []

    def visit(text, cm, tm, font, size):
        if text.strip():
            m = mul(tm, cm)
            out.append(size * math.hypot(m[0], m[1]))
    PdfReader(io.BytesIO(data)).pages[0].extract_text(visitor_text=visit)
    return out


def pdf_fonts(data: bytes) -> dict:
    """{font name: embedded?} of page 1 (Type0 fonts: look in the descendant's descriptor)."""
    from pypdf import PdfReader
    page = PdfReader(io.BytesIO(data)).pages[0]
    out = {}
    for ref in page["/Resources"]["/Font"].values():
        f = ref.get_object()
        desc = f.get("/FontDescriptor")
        if desc is None and "/DescendantFonts" in f:
            desc = f["/DescendantFonts"][0].get_object().get("/FontDescriptor")
        desc = desc.get_object() if desc is not None else {}
        out[str(f["/BaseFont"])] = any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3"))
    return out


# ---------------------------------------------------------------- pure pieces

def test_tex_to_html_covers_label_math(ex):
    assert ex.tex_to_html("$a_{ij}$") == "<i>a</i><sub><i>ij</i></sub>"
    assert ex.tex_to_html(r"$\alpha_{ij} = \mathrm{softmax}(q_i \cdot k_j)$") == \
        "α<sub><i>ij</i></sub> = softmax(<i>q</i><sub><i>i</i></sub> · <i>k</i><sub><i>j</i></sub>)"
    assert ex.tex_to_html(r"$\Delta a_{ij}$ (variant $-$ softmax)") == "Δ<i>a</i><sub><i>ij</i></sub> (variant − softmax)"
    assert ex.tex_to_html(r"costs \$5, $x^2$") == "costs $5, <i>x</i><sup>2</sup>"
    assert ex.tex_to_html("no math, (3)tok") == "no math, (3)tok"
    assert "\\" not in ex.tex_to_html(r"$\unknowncmd x$")


def test_options_validate_with_one_line_messages(ex):
    from compute.errors import InputError
    for kw, msg in [({"fmt": "eps"}, "format"), ({"width": "triple"}, "width"), ({"font": "mono"}, "font"),
                    ({"dpi": 10}, "dpi"), ({"size_pt": 14}, "font size"), ({"height_in": 40}, "height")]:
        with pytest.raises(InputError, match=msg):
            ex.ExportOptions(**kw).validate()
    assert ex.ExportOptions(width="single").width_px * 300 / 96 == 990.0
    assert ex.ExportOptions(width="double").width_px * 300 / 96 == 2070.0


def test_paper_restyle_fonts_sizes_labels_and_no_ui_marks(ex):
    opts = ex.ExportOptions(font="sans", size_pt=9, width="double")
    raw, fig = grid_fig(ex, opts)
    assert any(tr.name == "selected" for tr in raw.data)
    assert not any(tr.name == "selected" for tr in fig.data)                  # selection ring is UI state
    assert fig.layout.width == pytest.approx(6.9 * 96) and fig.layout.hovermode is False
    assert fig.layout.title.text is None                                       # the caption carries it
    px = 9 * 4 / 3
    assert fig.layout.font.size == pytest.approx(px) and "Liberation Sans" in fig.layout.font.family
    assert fig.layout.xaxis.tickfont.size == pytest.approx(px) and fig.layout.xaxis.linewidth <= 0.6
    assert raw.data[0].marker.size is not None and max(fig.data[0].marker.size) <= 10
    _, hm = heatmap_fig(ex, ex.ExportOptions())
    bar = hm.data[0].colorbar
    assert bar.title.text == ex.tex_to_html("$a_{ij}$") + " (log scale)"        # a_ij written as math
    assert "10<sup>−4</sup>" in bar.ticktext
    assert hm.layout.xaxis.title.text == "key <i>j</i>" and hm.layout.yaxis.title.text == "query <i>i</i>"
    kept = ex.paper_figure(grid_fig(ex, opts)[0], ex.ExportOptions(highlight=True, title=True), 1.0)
    assert any(tr.name == "selected" for tr in kept.data) and kept.layout.title.text == "grid"


def test_png_dpi_chunk_and_figure_tables(ex):
    from visapp.export import registry as reg
    raw, _ = heatmap_fig(ex, ex.ExportOptions())
    t = reg.heatmap_tables(raw, concat=True)["matrix"]
    a = causal_map(len(TOKENS))
    got = np.array([[np.nan if v is None else v for v in r[1:]] for r in t.rows], float)
    expect = np.where(np.tri(len(TOKENS), dtype=bool), a, np.nan)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)          # raw a, not log10 a
    assert t.columns[1] == "(0)The" and t.rows[10][0] == "(10)<b>"          # plain text in data, not entities
    csv = t.to_csv().splitlines()
    assert csv[0].startswith("query \\ key,(0)The") and csv[1].split(",")[2] == ""   # causal blank
    js = t.to_json()
    assert js["rows"][0][2] is None and js["rows"][1][1] == pytest.approx(a[1, 0], rel=1e-6)


# ---------------------------------------------------------------- rendered files

def test_pdf_parses_embeds_fonts_and_keeps_text(ex):
    opts = ex.ExportOptions(fmt="pdf", font="serif")
    _, fig = heatmap_fig(ex, opts)
    pdf = ex.render(fig, opts)
    from pypdf import PdfReader
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    w_pt = float(reader.pages[0].mediabox.width)
    assert w_pt == pytest.approx(3.3 * 72, rel=0.01)                          # single column
    fonts = pdf_fonts(pdf)
    assert fonts and all(fonts.values()), fonts                               # every font embedded
    assert any("Serif" in name for name in fonts)
    text = reader.pages[0].extract_text()
    assert "query" in text and "key" in text and "cat" in text               # text, not outlines
    sizes = pdf_text_sizes(pdf)                 # 8 pt exactly (kaleido's page margins would shrink it)
    assert sizes and all(abs(s - 8) < 0.05 or abs(s - 0.7 * 8) < 0.05 for s in sizes), sorted(set(sizes))
    assert sum(abs(s - 8) < 0.05 for s in sizes) > 20                         # 0.7: the ij subscripts


def test_pdf_title_is_the_figures_title(ex):
    """Chromium writes its page title into the PDF (kaleido's 'Kaleido-fier'); the export sets the
    figure's own title (markup dropped), or a plain fallback when the figure has none."""
    from pypdf import PdfReader
    opts = ex.ExportOptions(fmt="pdf")
    raw, fig = heatmap_fig(ex, opts)
    assert fig.layout.title.text is None                                     # papers put it in the caption
    titled = PdfReader(io.BytesIO(ex.render(fig, opts, title="layer 3 <b>head 4</b> &amp; more"))).metadata
    assert titled.title == "layer 3 head 4 & more"
    untitled = PdfReader(io.BytesIO(ex.render(fig, opts))).metadata
    assert untitled.title == "attnvis figure" and "Kaleido" not in str(dict(untitled))


def test_svg_is_xml_with_text_elements_and_offline_math(ex):
    opts = ex.ExportOptions(fmt="svg")
    raw, fig = heatmap_fig(ex, opts)
    fig.update_layout(title=dict(text=r"$\alpha_{ij}$ of head 3.4"))
    svg = ex.render(fig, opts)
    root = svg_root(svg)
    assert root.tag == f"{SVG_NS}svg" and root.get("width") == "3.3in"
    all_text = texts(root)
    assert any(t == "(3) on" for t in all_text)                                 # token tick labels as text
    assert any(t.startswith("aij") for t in all_text)                          # a_ij colour bar title
    assert any(t.startswith("αij of head 3.4") for t in all_text)              # TeX turned into text
    assert "$" not in svg.decode() and "\\alpha" not in svg.decode()
    sub = [ts for ts in root.iter(f"{SVG_NS}tspan") if "".join(ts.itertext()) == "ij" and ts.get("dy")]
    assert len(sub) >= 2 and all(float(ts.get("dy").rstrip("em")) > 0 for ts in sub)   # lowered subscripts
    min_px = 8 * 4 / 3 - 0.01                                                    # 8 pt
    sizes = [float(m) for m in re.findall(r"font-size: ?([\d.]+)px", svg.decode())]
    assert sizes and min(s for s in sizes) >= min_px * 0.69                      # sub/superscripts at 70%
    body = [float(re.search(r"font-size: ?([\d.]+)px", t.get("style")).group(1))
            for t in root.iter(f"{SVG_NS}text") if "font-size" in (t.get("style") or "")]
    assert body and min(body) >= min_px                                          # every text >= 8 pt
    assert len(list(root.iter(f"{SVG_NS}image"))) == 1                          # the heatmap raster only


def test_scatter_figures_stay_vector(ex):
    opts = ex.ExportOptions(fmt="svg")
    _, fig = grid_fig(ex, opts)
    root = svg_root(ex.render(fig, opts))
    assert not list(root.iter(f"{SVG_NS}image"))                                # no raster anywhere
    assert len([p for p in root.iter(f"{SVG_NS}path") if "point" in (p.get("class") or "")]) >= 24


@pytest.mark.parametrize("width,dpi", [("single", 300), ("double", 150)])
def test_png_pixels_match_width_times_dpi(ex, width, dpi):
    opts = ex.ExportOptions(fmt="png", width=width, dpi=dpi)
    _, fig = heatmap_fig(ex, opts)
    png = ex.render(fig, opts)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert w == round(ex.PAPER_WIDTH_IN[width] * dpi)                          # 3.3 in x 300 dpi = 990 px
    assert h == pytest.approx(fig.layout.height * dpi / 96, abs=1)
    i = png.index(b"pHYs")
    ppm_x, ppm_y, unit = struct.unpack(">IIB", png[i + 4:i + 13])
    assert unit == 1 and ppm_x == ppm_y == round(dpi / 0.0254)


def test_concurrent_exports_get_their_own_figure(ex, monkeypatch):
    """kaleido's shared server mixes up concurrent requests: renders run one at a time (the export
    lock), and each caller gets its own figure back."""
    opts = ex.ExportOptions(fmt="svg", title=True)
    figs = {f"figure-{i}": grid_fig(ex, opts, title=f"figure-{i}")[1] for i in range(5)}
    got, errors, active, peak = {}, [], [0], [0]
    real = ex._RENDERER.render

    def counting(*a, **kw):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return real(*a, **kw)
        finally:
            active[0] -= 1
    monkeypatch.setattr(ex._RENDERER, "render", counting)

    def work(name):
        try:
            got[name] = ex.render(figs[name], opts).decode()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in figs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 5 and peak[0] == 1
    for name, svg in got.items():
        titles = [t for t in texts(svg_root(svg.encode())) if t.startswith("figure-")]
        assert titles == [name]


def test_export_modules_do_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, visapp.export, visapp.export_ui, visapp.export.cli, visapp.export.registry, visapp.pages.head; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
