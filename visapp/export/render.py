"""Rendering: the paper restyle of an app figure (sizes, fonts, a_ij labels) and kaleido (system
Chromium) turning it into SVG/PDF/PNG bytes; see the package docstring for the rendering notes."""
from __future__ import annotations

import asyncio
import atexit
import io
import logging
import os
import re
import shutil
import struct
import threading
import zlib
from typing import Optional

import plotly.graph_objects as go


from ..templates import PAPER_FONTS, paper_template
from .options import CSS_PX_PER_IN, RENDER_TIMEOUT_S, LOCK_TIMEOUT_S, SELECTION_COLOUR, ExportError, ExportOptions

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- math in labels

_GREEK = dict(zip("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
                  "sigma tau upsilon phi chi psi omega".split(), "αβγδεζηθικλμνξοπρστυφχψω"))
_GREEK.update({"Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ",
               "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "varepsilon": "ε", "varphi": "φ"})
_SYMBOLS = {"cdot": "·", "times": "×", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "neq": "≠", "ne": "≠",
            "approx": "≈", "sim": "∼", "infty": "∞", "sum": "∑", "prod": "∏", "to": "→", "rightarrow": "→",
            "leftarrow": "←", "ell": "ℓ", "in": "∈", "pm": "±", "mid": "|", "partial": "∂", "nabla": "∇",
            "propto": "∝", "langle": "⟨", "rangle": "⟩", "lVert": "‖", "rVert": "‖", "|": "‖", "top": "⊤",
            "ldots": "…", "dots": "…", "quad": "  ", ",": " ", ";": " ", " ": " ", "!": "", "{": "{", "}": "}",
            "%": "%", "_": "_", "$": "$", "#": "#", "&": "&amp;"}
_BINARY = {"cdot", "times", "le", "leq", "ge", "geq", "neq", "ne", "approx", "sim", "to", "rightarrow",
           "leftarrow", "in", "pm", "propto", "mid"}
_FUNCS = {"log", "exp", "max", "min", "softmax", "sin", "cos", "arg", "argmax", "KL", "TV", "det", "lim", "sup"}
_TEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}_^]|[A-Za-z]|[^\\{}_^A-Za-z]")


def _tex(tokens: list[str], i: int, stop_at_brace: bool) -> tuple[str, int]:
    """Parse TeX tokens from i into plotly pseudo-HTML; returns (html, next index)."""
    out = []
    while i < len(tokens):
        t = tokens[i]
        if t == "}":
            return "".join(out), (i + 1 if stop_at_brace else i + 1)
        if t == "{":
            inner, i = _tex(tokens, i + 1, True)
            out.append(inner)
            continue
        if t in ("_", "^"):
            arg, i = _tex_arg(tokens, i + 1)
            tag = "sub" if t == "_" else "sup"
            out.append(f"<{tag}>{arg}</{tag}>")
            continue
        if t.startswith("\\"):
            name = t[1:]
            i += 1
            if name.isalpha() and i < len(tokens) and tokens[i] == " ":
                i += 1                    # a space after a command name only ends the name (as in TeX)
            if name in ("mathrm", "text", "operatorname", "textrm"):
                arg, i = _tex_arg(tokens, i, italic=False)
                out.append(arg)
            elif name in ("mathbf", "textbf", "boldsymbol"):
                arg, i = _tex_arg(tokens, i)
                out.append(f"<b>{arg}</b>")
            elif name in ("mathit", "textit"):
                arg, i = _tex_arg(tokens, i, italic=False)
                out.append(f"<i>{arg}</i>")
            elif name in _GREEK:
                out.append(_GREEK[name])
            elif name in _BINARY:
                out.append(f" {_SYMBOLS[name]} ")     # TeX spaces binary operators and relations
            elif name in _SYMBOLS:
                out.append(_SYMBOLS[name])
            elif name in _FUNCS:
                out.append(name)
            else:
                out.append(name)          # unknown command: its name, never a backslash
            continue
        if t.isalpha():
            j = i
            while j < len(tokens) and tokens[j].isalpha() and len(tokens[j]) == 1:
                j += 1
            out.append(f"<i>{''.join(tokens[i:j])}</i>")
            i = j
            continue
        out.append({"<": "&lt;", ">": "&gt;", "&": "&amp;", "-": "−", "~": " "}.get(t, t))
        i += 1
    return "".join(out), i


def _tex_arg(tokens: list[str], i: int, italic: bool = True) -> tuple[str, int]:
    """One argument: a {group} or a single token."""
    if i >= len(tokens):
        return "", i
    if tokens[i] == "{":
        if not italic:
            depth, j = 1, i + 1
            while j < len(tokens) and depth:
                depth += {"{": 1, "}": -1}.get(tokens[j], 0)
                j += 1
            raw = "".join(tokens[i + 1:j - 1])
            return raw.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), j
        return _tex(tokens, i + 1, True)
    return _tex([tokens[i]], 0, False)[0], i + 1


def tex_to_html(text: str) -> str:
    """'$a_{ij}$ weight' -> '<i>a</i><sub><i>ij</i></sub> weight': TeX math segments as plotly's own
    text markup, which kaleido renders offline (no MathJax) and which stays <text> in SVG/PDF."""
    if not isinstance(text, str) or "$" not in text:
        return text

    def conv(m: re.Match) -> str:
        return re.sub(r" {2,}", " ", _tex(_TEX_TOKEN.findall(m.group(1)), 0, False)[0])

    return re.sub(r"(?<!\\)\$(.+?)(?<!\\)\$", conv, text).replace("\\$", "$")


A_IJ = tex_to_html("$a_{ij}$")
# The app's screen labels -> paper labels with the attention weight written a_ij (query i, key j).
PAPER_LABELS = {
    "a": f"{A_IJ}", "a (log)": f"{A_IJ} (log scale)", "a (keys ≥ 1)": f"{A_IJ}, j ≥ 1",
    "key 0": tex_to_html("$a_{i0}$"), "max a": f"max {A_IJ}", "mean a": f"mean {A_IJ}",
    "query": "query <i>i</i>", "key": "key <i>j</i>", "eps": "ε",
}


def _power_of_ten(text):
    """'1e-4' -> 10^-4 as superscript (tick labels of log colour bars)."""
    m = re.fullmatch(r"1e([+-]?)0*(\d+)", str(text))
    if not m:
        return text
    return f"10<sup>{'−' if m.group(1) == '-' else ''}{m.group(2)}</sup>"


def paper_label(text):
    if not isinstance(text, str):
        return text
    text = re.sub(r"^eps = ", "ε = ", text)          # the sinks view's threshold marker
    return tex_to_html(PAPER_LABELS.get(text, text))


def _convert_text(obj, keys=("text", "name", "ticktext", "title")):
    """Walk a figure dict and run tex_to_html over every label string."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and isinstance(v, str):
                obj[k] = tex_to_html(v)
            elif k in keys and isinstance(v, (list, tuple)) and v and all(isinstance(s, str) for s in v):
                obj[k] = [tex_to_html(s) for s in v]
            else:
                _convert_text(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            _convert_text(v, keys)
    return obj


# ---------------------------------------------------------------- the paper restyle

def paper_template_name(font: str, size_pt: float) -> str:
    """Register templates.paper_template(font, size) under a name (figure builders take names)."""
    import plotly.io as pio
    name = f"attnvis_paper_{font}_{float(size_pt):g}"
    if name not in pio.templates:
        pio.templates[name] = paper_template(font, float(size_pt))
    return name


def _scaled(v, s: float, lo: float, hi: float):
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, str):
        return [min(hi, max(lo, float(x) * s)) for x in v]
    return min(hi, max(lo, float(v) * s))


def _drop_selection(fig: go.Figure) -> None:
    keep = []
    for tr in fig.data:
        m = getattr(tr, "marker", None)
        if tr.name == "selected" or (m is not None and isinstance(m.color, str) and m.color == SELECTION_COLOUR):
            continue
        keep.append(tr)
    fig.data = keep
    fig.layout.shapes = [s for s in fig.layout.shapes if not (s.line and s.line.color == SELECTION_COLOUR)]


def paper_figure(fig: go.Figure, opts: ExportOptions, aspect: float) -> go.Figure:
    """A copy of an app figure sized and styled for a paper column: 7-10 pt fonts everywhere, thin
    axes and lines, compact colour bars and legends, no hover or selection marks, a_ij labels."""
    opts.validate()
    f = go.Figure(fig)
    px = opts.font_px
    w = opts.width_px
    h = float(opts.height_in) * CSS_PX_PER_IN if opts.height_in else w * aspect
    s = min(1.0, w / 800.0)                   # screen figures are drawn for ~800 px
    if not opts.highlight:
        _drop_selection(f)
    family = PAPER_FONTS[opts.font]
    title = f.layout.title.text if opts.title else None
    f.update_layout(
        template=paper_template(opts.font, opts.size_pt), width=w, height=h, autosize=False,
        font=dict(family=family, size=px, color="#000"),
        title=dict(text=title or None, font=dict(size=px * 1.1), x=0, xanchor="left", y=0.995, yanchor="top"),
        margin=dict(l=4, r=4, t=(px * 2.0 if title else 4), b=4, pad=0, autoexpand=True),
        hovermode=False, dragmode=False, clickmode="none", paper_bgcolor="white", plot_bgcolor="white",
        legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom", font=dict(size=px),
                    title=dict(font=dict(size=px)), bgcolor="rgba(0,0,0,0)", borderwidth=0, tracegroupgap=0,
                    itemwidth=30, entrywidth=0, traceorder="normal"),
    )
    axis = dict(automargin=True, showline=True, linewidth=0.6, linecolor="#000", mirror=False, ticks="outside",
                tickwidth=0.6, ticklen=2.5, tickcolor="#000", showgrid=False, zeroline=False,
                tickfont=dict(size=px, family=family), title_font=dict(size=px, family=family), title_standoff=2)
    f.for_each_xaxis(lambda ax: (ax.update(axis), ax.title.update(text=paper_label(ax.title.text))))
    f.for_each_yaxis(lambda ax: (ax.update(axis), ax.title.update(text=paper_label(ax.title.text))))
    bar = dict(thickness=7, outlinewidth=0, xpad=3, ypad=0, tickwidth=0.6, ticklen=2,
               tickfont=dict(size=px, family=family))

    def style_bar(cb):
        cb.update(bar)
        cb.title.update(text=paper_label(cb.title.text), font=dict(size=px, family=family))
        if cb.ticktext:
            cb.ticktext = [_power_of_ten(t) for t in cb.ticktext]

    for key in list(f.layout.to_plotly_json()):
        if key.startswith("coloraxis"):
            style_bar(f.layout[key].colorbar)
    for tr in f.data:
        if isinstance(tr, go.Heatmap):
            style_bar(tr.colorbar)
            continue
        if isinstance(tr, go.Scatter):
            m = tr.marker
            if m.size is not None:
                m.size = _scaled(m.size, max(s, 0.45), 2.5, 10)
            elif "markers" in (tr.mode or "markers"):
                m.size = 3.5
            if m.line is not None and str(m.line.color).lower() in ("#fff", "#ffffff", "white"):
                tr.showlegend = False         # white flag marks (x on a heatmap) are invisible in a legend
            if m.line is not None and m.line.width is not None:
                m.line.width = min(float(m.line.width), 0.4)
            if m.showscale:
                style_bar(m.colorbar)
            if tr.line is not None:
                lw = tr.line.width if tr.line.width is not None else 2.0
                tr.line.width = max(0.4, min(1.6, float(lw) * max(s, 0.5)))
            if tr.textfont is not None:
                tr.textfont.size = px
                tr.textfont.family = family
        elif isinstance(tr, go.Bar):
            tr.marker.line.width = 0
    for ann in f.layout.annotations:
        ann.font.size = px
        ann.font.family = family
        if ann.arrowwidth is not None or ann.showarrow:
            ann.arrowwidth = 0.6
        ann.text = paper_label(ann.text)
    for sh in f.layout.shapes:
        if sh.line is not None and sh.line.width is not None:
            sh.line.width = min(float(sh.line.width), 0.8)
    return f


# ---------------------------------------------------------------- kaleido

def browser_path() -> str:
    """BROWSER_PATH, else `chromium` (or google-chrome) on PATH. Never downloads one."""
    p = os.environ.get("BROWSER_PATH")
    if p:
        if not os.path.isfile(p):
            raise ExportError(f"BROWSER_PATH={p} does not exist: install chromium (apt-get install -y chromium)")
        return p
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.path.isfile("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    raise ExportError("figure export needs Chromium: apt-get install -y chromium (or set BROWSER_PATH)")


class _Renderer:
    """One kaleido (one headless Chromium tab) per process on its own event-loop thread. Calls are
    serialised by EXPORT_LOCK; after a fork the child starts its own browser."""

    def __init__(self):
        self._pid = None
        self._loop = None
        self._thread = None
        self._k = None

    def _start(self) -> None:
        import kaleido

        path = browser_path()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kaleido", daemon=True)
        thread.start()

        class PaperPage(kaleido.PageGenerator):
            # kaleido prints PDFs with 0.1 in page margins, which shrinks the figure (8 pt text comes
            # out at 7.5 pt) and crops its bottom edge; the figure is the page here.
            header = kaleido.PageGenerator.header + "        <style>@page { margin: 0; }</style>\n"

        async def open_():
            # mathjax=False: kaleido's MathJax is a CDN script (offline: TeX is converted by tex_to_html)
            k = kaleido.Kaleido(path=path, page_generator=PaperPage(mathjax=False), timeout=RENDER_TIMEOUT_S)
            await k.open()
            return k

        try:
            self._k = asyncio.run_coroutine_threadsafe(open_(), loop).result(timeout=RENDER_TIMEOUT_S)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            raise ExportError(f"could not start Chromium for export ({exc.__class__.__name__}: {exc})") from None
        self._loop, self._thread, self._pid = loop, thread, os.getpid()

    def close(self) -> None:
        if self._k is None or self._pid != os.getpid():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._k.close(), self._loop).result(timeout=15)
        except Exception:  # the browser may already be gone at exit
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._k = None
        self._pid = None

    def render(self, fig_dict: dict, opts: dict) -> bytes:
        for attempt in (0, 1):
            if self._k is None or self._pid != os.getpid():
                self._k = None
                self._start()
            fut = asyncio.run_coroutine_threadsafe(self._k.calc_fig(fig_dict, opts=opts), self._loop)
            try:
                return fut.result(timeout=RENDER_TIMEOUT_S)
            except Exception as exc:
                fut.cancel()
                log.warning("kaleido render failed (%s); restarting the browser", exc)
                self.close()
                if attempt:
                    raise ExportError(f"rendering failed ({exc.__class__.__name__}: {exc})") from None
        raise AssertionError("unreachable")


_RENDERER = _Renderer()
EXPORT_LOCK = threading.Lock()


def shutdown() -> None:
    """Close this process's browser (the CLI and tests call it; atexit covers the app)."""
    if EXPORT_LOCK.acquire(timeout=10):     # a hung render must not hang the interpreter's exit
        try:
            _RENDERER.close()
        finally:
            EXPORT_LOCK.release()


atexit.register(shutdown)


def _png_with_dpi(png: bytes, dpi: int) -> bytes:
    """Replace/insert the pHYs chunk so image tools read the intended DPI."""
    sig, pos, chunks = png[:8], 8, []
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos:pos + 4])
        ctype = png[pos + 4:pos + 8]
        chunks.append((ctype, png[pos:pos + 12 + n]))
        pos += 12 + n
    ppm = int(round(dpi / 0.0254))
    data = struct.pack(">IIB", ppm, ppm, 1)
    phys = struct.pack(">I", 9) + b"pHYs" + data + struct.pack(">I", zlib.crc32(b"pHYs" + data) & 0xFFFFFFFF)
    out = [sig]
    for ctype, raw in chunks:
        if ctype == b"pHYs":
            continue
        out.append(raw)
        if ctype == b"IHDR":
            out.append(phys)
    return b"".join(out)


def _svg_in_inches(svg: bytes, w_in: float, h_in: float) -> bytes:
    """Physical size on the root <svg> (the viewBox keeps the CSS-pixel geometry)."""
    text = svg.decode("utf-8")
    m = re.search(r"<svg\b[^>]*>", text)
    if not m:
        return svg
    tag = m.group(0)
    new = re.sub(r'\swidth="[^"]*"', f' width="{w_in:.4g}in"', tag, count=1)
    new = re.sub(r'\sheight="[^"]*"', f' height="{h_in:.4g}in"', new, count=1)
    return (text[:m.start()] + new + text[m.end():]).encode("utf-8")


def plain_title(text: Optional[str]) -> str:
    """A plotly title as plain text (markup tags dropped, entities decoded) for file metadata."""
    import html
    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", text or "")).split())


def _pdf_with_title(pdf: bytes, title: str) -> bytes:
    """The PDF with its document title set (Chromium writes its page title, kaleido's 'Kaleido-fier')."""
    from pypdf import PdfReader, PdfWriter
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_metadata({"/Title": title})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def render(fig: go.Figure, opts: ExportOptions, title: Optional[str] = None) -> bytes:
    """Bytes of a paper figure (already restyled) in opts.fmt; one render at a time per process.
    `title`: the PDF's document title (default: the figure's title, else 'attnvis figure')."""
    opts.validate()
    w, h = float(fig.layout.width), float(fig.layout.height)
    fig_dict = _convert_text(fig.to_plotly_json())
    scale = int(opts.dpi) / CSS_PX_PER_IN if opts.fmt == "png" else 1.0
    if not EXPORT_LOCK.acquire(timeout=LOCK_TIMEOUT_S):
        raise ExportError("another export is still running; try again in a moment")
    try:
        out = _RENDERER.render(fig_dict, dict(format=opts.fmt, width=w, height=h, scale=scale))
    finally:
        EXPORT_LOCK.release()
    if opts.fmt == "png":
        return _png_with_dpi(out, int(opts.dpi))
    if opts.fmt == "svg":
        return _svg_in_inches(out, w / CSS_PX_PER_IN, h / CSS_PX_PER_IN)
    return _pdf_with_title(out, plain_title(title or fig.layout.title.text) or "attnvis figure")
