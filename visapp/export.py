"""Paper-ready export: the app's figures restyled for a two-column paper and rendered server-side
with kaleido (system Chromium), their numbers as CSV/JSON, and a caption with provenance.

    python -m visapp.export --model smollm2-135m --text-file t.txt --figure head:3.4 --format pdf --out f.pdf

Pipeline (app and CLI alike): figure_registry builds the view's figure with the paper template (the
same view function the app calls) -> paper_figure() fixes size, fonts, line widths and labels ->
render() turns it into SVG/PDF/PNG bytes.

Rendering notes (dash-ecosystem.md section 4):
  * kaleido drives a headless Chromium; the browser is found via BROWSER_PATH or `chromium` on PATH
    (never downloaded). One browser per process, started lazily on the first export (so after a
    gunicorn fork), and every render holds EXPORT_LOCK: kaleido's shared server is not thread-safe.
  * kaleido's MathJax comes from a CDN, so it is switched off; TeX in labels ($a_{ij}$) is turned into
    plotly's own <sub>/<sup>/<i> markup (tex_to_html), which renders offline and stays text in SVG/PDF.
  * Size: kaleido works in CSS pixels (96 per inch; a PDF point is 0.75 px), so 3.3 in = 316.8 px; PNG
    scale = dpi / 96, so the PNG is exactly width x dpi pixels wide (and carries a pHYs DPI chunk).
"""
from __future__ import annotations

import asyncio
import atexit
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import plotly.graph_objects as go

from compute.errors import InputError, UserError

from . import figure_registry as reg
from .templates import PAPER_FONTS, PAPER_WIDTH_IN, PX_PER_PT, paper_template

log = logging.getLogger(__name__)

FORMATS = ("svg", "pdf", "png")
DATA_FORMATS = ("csv", "json")
WIDTHS = tuple(PAPER_WIDTH_IN)               # single (3.3 in), double (6.9 in)
FONTS = tuple(PAPER_FONTS)                   # serif, sans
CSS_PX_PER_IN = 96.0
SIZE_PT_RANGE = (7.0, 10.0)
DPI_RANGE = (72, 1200)
SELECTION_COLOUR = "#d00"                    # the app's selected-head marks (UI state, not data)
RENDER_TIMEOUT_S = 90.0
LOCK_TIMEOUT_S = 120.0


class ExportError(UserError):
    """The figure could not be rendered (no browser, render failure, busy)."""


@dataclass(frozen=True)
class ExportOptions:
    fmt: str = "pdf"
    width: str = "single"
    dpi: int = 300
    font: str = "serif"
    size_pt: float = 8.0
    height_in: Optional[float] = None        # None: the figure's own aspect ratio
    title: bool = False                      # in-figure title (papers put it in the caption)
    highlight: bool = False                  # keep the app's selected-head marks

    def validate(self) -> "ExportOptions":
        if self.fmt not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}")
        if self.width not in WIDTHS:
            raise InputError(f"width must be one of {', '.join(WIDTHS)}")
        if self.font not in FONTS:
            raise InputError(f"font must be one of {', '.join(FONTS)}")
        try:
            dpi = int(self.dpi)
        except (TypeError, ValueError):
            raise InputError("dpi must be a whole number") from None
        if not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
            raise InputError(f"dpi must be between {DPI_RANGE[0]} and {DPI_RANGE[1]}")
        if not SIZE_PT_RANGE[0] <= float(self.size_pt) <= SIZE_PT_RANGE[1]:
            raise InputError(f"font size must be between {SIZE_PT_RANGE[0]:g} and {SIZE_PT_RANGE[1]:g} pt")
        if self.height_in is not None and not 0.5 <= float(self.height_in) <= 12:
            raise InputError("height must be between 0.5 and 12 inches")
        return self

    @property
    def width_in(self) -> float:
        return PAPER_WIDTH_IN[self.width]

    @property
    def width_px(self) -> float:
        # rounded so that width x dpi/96 is exactly width_in x dpi (3.3 * 96 is 316.79999...)
        return round(self.width_in * CSS_PX_PER_IN, 6)

    @property
    def font_px(self) -> float:
        return float(self.size_pt) * PX_PER_PT

    def png_size(self, height_px: float) -> tuple[int, int]:
        s = int(self.dpi) / CSS_PX_PER_IN
        return int(round(self.width_px * s)), int(round(height_px * s))


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


def render(fig: go.Figure, opts: ExportOptions) -> bytes:
    """Bytes of a paper figure (already restyled) in opts.fmt; one render at a time per process."""
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
    return out


# ---------------------------------------------------------------- provenance

@lru_cache(maxsize=1)
def _static_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "numpy", "plotly", "kaleido", "choreographer", "dash"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        out["attnvis_commit"] = (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        out["attnvis_commit"] = None
    try:
        v = subprocess.run([browser_path(), "--version"], capture_output=True, text=True, timeout=20).stdout
        out["chromium"] = (re.findall(r"[Cc]hrom\w*\s+([\d.]+)", v) or [v.strip()[-40:] or None])[-1]
    except (OSError, subprocess.SubprocessError, UserError):
        out["chromium"] = None
    return out


def software_versions() -> dict:
    return dict(_static_versions())


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def reproduce_command(figure: str, req, settings: reg.ViewSettings, opts: ExportOptions, *,
                      text_file: str = "text.txt", out: Optional[str] = None, variants: Sequence[str] = (),
                      variant_layers: Optional[Sequence[int]] = None) -> list[str]:
    """The `python -m visapp.export` argument list that re-renders this figure (flags of export_cli)."""
    d = reg.ViewSettings()
    view, _, part = figure.partition("/")
    name = f"head:{settings.head[0]}.{settings.head[1]}" if view == "head" else view
    args = ["python", "-m", "visapp.export", "--model", req.model, "--text-file", text_file, "--figure", name]
    if part and part != reg.spec(view).part:
        args += ["--part", part]
    if view != "head" and settings.head != d.head:
        args += ["--head", f"{settings.head[0]}.{settings.head[1]}"]
    args += ["--format", opts.fmt, "--width", opts.width, "--font", opts.font, "--size", f"{float(opts.size_pt):g}"]
    if opts.fmt == "png":
        args += ["--dpi", str(int(opts.dpi))]
    if opts.height_in:
        args += ["--height", f"{float(opts.height_in):g}"]
    if opts.title:
        args.append("--title")
    if opts.highlight:
        args.append("--highlight")
    for flag, attr in (("--metric", "metric"), ("--size-by", "size_by"), ("--colours", "colours"),
                       ("--scale", "scale"), ("--pool", "pool"), ("--eps", "eps"),
                       ("--threshold", "head_threshold"), ("--graph-threshold", "graph_threshold")):
        v = getattr(settings, attr)
        if v != getattr(d, attr):
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    if settings.important:
        args += ["--important", ",".join(str(i) for i in settings.important)]
    from .service import Request
    r0 = Request()
    for flag, attr in (("--backend", "backend"), ("--max-tokens", "max_tokens"), ("--sink-tokens", "sink_tokens"),
                       ("--items", "items"), ("--generate", "generate")):
        v = getattr(req, attr)
        if v != getattr(r0, attr):
            args += [flag, str(v)]
    if req.probes:
        args += ["--probes", ",".join(req.probes)]
    if req.importance:
        args.append("--importance")
    if variants:
        args += ["--variants", ",".join(variants)]
    if variant_layers:
        args += ["--variant-layers", ",".join(str(l) for l in variant_layers)]
    if out:
        args += ["--out", out]
    return args


def provenance(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions, fig: Optional[go.Figure] = None,
               command: Optional[list[str]] = None) -> dict:
    """Everything needed to reproduce one figure: model, text hash, analysis and view settings, export
    options, software versions, and the CLI command."""
    from .service import get_request
    res = ctx.res
    req = get_request(ctx.key)
    cmp = ctx.comparison
    prov = {
        "figure": sp.name, "label": sp.label, "caption": sp.caption(ctx),
        "screen_title": (fig.layout.title.text if fig is not None else None) or None,
        "model": res.model,
        "model_info": {"kind": res.model_kind, "causal": bool(res.causal), "n_layers": res.n_layers,
                       "n_heads": res.n_heads, "n_kv_heads": res.n_kv_heads},
        "text_sha256": text_sha256(res.text), "n_tokens": res.n_tokens, "n_chars": len(res.text),
        "analysis": {"key": ctx.key, "backend": res.backend, "options": _jsonable(res.options),
                     "request": {k: v for k, v in (req.to_dict() if req else {}).items() if k != "text"}},
        "view": ctx.settings.public(),
        "variants": ({"specs": list(cmp.specs), "layers": cmp.layers} if cmp is not None else None),
        "export": {**asdict(opts), "width_in": opts.width_in},
        "software": software_versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if command is None and req is not None:
        command = reproduce_command(sp.name, req, ctx.settings, opts,
                                    variants=list(cmp.specs) if cmp is not None else (),
                                    variant_layers=cmp.layers if cmp is not None else None)
    prov["reproduce"] = " ".join(_shell_quote(a) for a in command) if command else None
    return prov


def _shell_quote(a: str) -> str:
    import shlex
    return shlex.quote(str(a))


def _jsonable(o):
    return json.loads(json.dumps(o, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))


def caption_text(prov: dict) -> str:
    """A human-readable caption file (the JSON sidecar holds the same facts)."""
    sw = prov["software"]
    ex = prov["export"]
    lines = [
        f"Figure: {prov['figure']} ({prov['label']})",
        f"Caption: {prov['caption']}",
        f"Model: {prov['model']} ({prov['model_info']['n_layers']} layers x {prov['model_info']['n_heads']} heads, "
        f"{prov['model_info']['kind']})",
        f"Text: sha256 {prov['text_sha256']}, {prov['n_tokens']} tokens, {prov['n_chars']} characters",
        f"Analysis: {json.dumps(prov['analysis']['request'], sort_keys=True)} (backend {prov['analysis']['backend']}, "
        f"key {prov['analysis']['key']})",
        f"View settings: {json.dumps(prov['view'], sort_keys=True)}",
    ]
    if prov.get("variants"):
        lines.append(f"Variants: {json.dumps(prov['variants'])}")
    lines += [
        f"Export: {ex['fmt']}, {ex['width']} column ({ex['width_in']} in), {ex['font']} {ex['size_pt']:g} pt"
        + (f", {ex['dpi']} dpi" if ex["fmt"] == "png" else ""),
        "Software: " + ", ".join(f"{k} {v}" for k, v in sw.items() if v),
        f"Reproduce: {prov['reproduce']}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- exporting one figure / its data

@dataclass
class Exported:
    name: str                  # 'head/map'
    fig: go.Figure             # the paper figure
    content: bytes
    tables: dict
    provenance: dict


def figure_of(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions) -> tuple[go.Figure, go.Figure]:
    """(the view's figure built with the paper template, the restyled paper figure)."""
    opts.validate()
    why = sp.unavailable(ctx)
    if why:
        raise InputError(f"{sp.name}: not available ({why})")
    raw = reg.build(sp, ctx, paper_template_name(opts.font, float(opts.size_pt)))
    return raw, paper_figure(raw, opts, sp.aspect_for(ctx, opts.width))


def export_figure(ctx: reg.Context, sp: reg.FigureSpec, opts: ExportOptions,
                  command: Optional[list[str]] = None) -> Exported:
    raw, fig = figure_of(ctx, sp, opts)
    content = render(fig, opts)
    return Exported(sp.name, fig, content, sp.tables(ctx, raw), provenance(ctx, sp, opts, raw, command))


def tables_of(ctx: reg.Context, sp: reg.FigureSpec) -> dict:
    why = sp.unavailable(ctx)
    if why:
        raise InputError(f"{sp.name}: not available ({why})")
    return sp.tables(ctx, reg.build(sp, ctx))


def data_bytes(tables: dict, fmt: str, prov: Optional[dict] = None) -> tuple[bytes, str]:
    """(content, file extension): JSON with every table (+ provenance); CSV for one table, or a zip of
    CSVs when the figure has several (a graph's nodes and edges)."""
    if fmt not in DATA_FORMATS:
        raise InputError(f"data format must be one of {', '.join(DATA_FORMATS)}")
    if not tables:
        raise InputError("this figure has no data table")
    if fmt == "json":
        doc = {"tables": {k: t.to_json() for k, t in tables.items()}}
        if prov is not None:
            doc["provenance"] = prov
        return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8"), "json"
    if len(tables) == 1:
        return next(iter(tables.values())).to_csv().encode("utf-8"), "csv"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, t in tables.items():
            z.writestr(f"{k}.csv", t.to_csv())
    return buf.getvalue(), "zip"


def file_stem(ctx: reg.Context, sp: reg.FigureSpec) -> str:
    base = f"{ctx.res.model}_{sp.view}"
    if sp.view in ("head", "variants", "generate") or (sp.view, sp.part) in (("graphs", "tokens"),
                                                                              ("entropy", "profile")):
        base += f"-L{ctx.head[0]}H{ctx.head[1]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{base}_{sp.part}")


def write_bundle(ctx: reg.Context, out_dir: str | Path, opts: ExportOptions, formats: Sequence[str] = ("pdf",),
                 text_name: str = "text.txt", variants: Sequence[str] = (),
                 variant_layers: Optional[Sequence[int]] = None, progress=None) -> dict:
    """Every available figure of every view in `formats`, its data (CSV and JSON) and caption files,
    the text itself and an index (bundle.json). Returns the index."""
    from .service import get_request

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / text_name).write_text(ctx.res.text, encoding="utf-8")
    req = get_request(ctx.key)
    index = {"model": ctx.res.model, "text_sha256": text_sha256(ctx.res.text), "text_file": text_name,
             "figures": {}, "skipped": {}, "software": software_versions()}
    todo = reg.all_specs()
    for i, sp in enumerate(todo):
        why = sp.unavailable(ctx)
        if why:
            index["skipped"][sp.name] = why
            continue
        if progress:
            progress(i / len(todo), sp.name)
        stem = file_stem(ctx, sp)
        files = []
        raw = None
        for fmt in formats:
            o = ExportOptions(**{**asdict(opts), "fmt": fmt})
            raw, fig = figure_of(ctx, sp, o)
            (out / f"{stem}.{fmt}").write_bytes(render(fig, o))
            files.append(f"{stem}.{fmt}")
        cmd = reproduce_command(sp.name, req, ctx.settings, ExportOptions(**{**asdict(opts), "fmt": formats[0]}),
                                text_file=text_name, out=f"{stem}.{formats[0]}", variants=variants,
                                variant_layers=variant_layers) if req is not None else None
        prov = provenance(ctx, sp, ExportOptions(**{**asdict(opts), "fmt": formats[0]}), raw, cmd)
        tables = sp.tables(ctx, raw)
        if tables:
            for fmt in DATA_FORMATS:
                content, ext = data_bytes(tables, fmt, prov if fmt == "json" else None)
                (out / f"{stem}.data.{ext}").write_bytes(content)
                files.append(f"{stem}.data.{ext}")
        (out / f"{stem}.caption.json").write_text(json.dumps(prov, indent=1, ensure_ascii=False), encoding="utf-8")
        (out / f"{stem}.caption.txt").write_text(caption_text(prov), encoding="utf-8")
        files += [f"{stem}.caption.json", f"{stem}.caption.txt"]
        index["figures"][sp.name] = files
    (out / "bundle.json").write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    return index


if __name__ == "__main__":          # python -m visapp.export ...
    from .export_cli import main
    sys.exit(main())
