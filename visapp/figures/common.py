"""Helpers shared by the figure builders: safe token labels, empty figures, binning edges by weight."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import get_colorscale

from ..templates import SCREEN

MAX_LABEL_CHARS = 14
# Whitespace a label would otherwise show as nothing: made visible (the hover and '(i)' keep the position).
VISIBLE_WS = {"\r\n": "⏎", "\n": "⏎", "\r": "⏎", "\t": "⇥", " ": "␣", "\u00a0": "⍽"}
_WS = re.compile("|".join(re.escape(k) for k in VISIBLE_WS))
_MARKUP = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Other invisible characters: C0 controls as their Control Pictures (␀ ␛ ...), DEL as ␡, format characters
# (zero-width space, BOM, bidi overrides that would reorder a label) as ◌, lone surrogates as �.
_CONTROLS = {c: 0x2400 + c for c in range(32)} | {0x7F: 0x2421}
_FORMAT = re.compile(r"[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                     r"\u2066-\u206f\ufeff\ufff9-\ufffb]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def escape_markup(text) -> str:
    """User text as plotly shows it literally: '&', '<' and '>' as entities (plotly renders its own
    pseudo-HTML in labels, hover and text). The one escape every figure builder applies, once, to the
    user strings it receives (tokens, labels, names, titles); callers pass plain text."""
    return str(text).translate(_MARKUP)


def escape_all(texts: Sequence) -> list[str]:
    return [escape_markup(t) for t in texts]


def plain_text(text: str) -> str:
    """The inverse of escape_markup, for text read back out of a figure (data tables, CSV)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def show_token(tok: str) -> str:
    """A token as readable plain text (tables, CSV, labels; figures escape it): line breaks and tabs as
    ⏎ and ⇥, a token of spaces only as ␣ per space (a leading space on a word stays a space), other
    invisible characters as visible marks, long tokens cut with '…', the empty token as '∅'."""
    tok = str(tok)
    if not tok:
        return "∅"
    if tok.strip(" \u00a0"):
        t = tok.replace("\r\n", "⏎").replace("\r", "⏎").replace("\n", "⏎").replace("\t", "⇥")
    else:
        t = _WS.sub(lambda m: VISIBLE_WS[m.group(0)], tok)
    t = _SURROGATE.sub("�", _FORMAT.sub("◌", t.translate(_CONTROLS)))
    if len(t) > MAX_LABEL_CHARS:
        t = t[:MAX_LABEL_CHARS - 1] + "…"
    return t


def token_label(i: int, tok: str) -> str:
    """'(i)tok' so repeated tokens stay distinct (same format as AttentionResult.label); plain text."""
    return f"({i}){show_token(tok)}"


def token_labels(tokens: Sequence[str], start: int = 0, stop: int | None = None) -> list[str]:
    stop = len(tokens) if stop is None else stop
    return [token_label(i, tokens[i]) for i in range(start, stop)]


_TEMPLATE_JSON: dict[str, tuple] = {}


def template_json(name: str) -> dict:
    """The registered template as a plain dict (cached): embedding it avoids plotly deep-copying a
    Template object into every figure (~30 ms each, most of a head click's server time)."""
    tpl = pio.templates[name]
    hit = _TEMPLATE_JSON.get(name)
    if hit is None or hit[0] is not tpl:
        hit = (tpl, tpl.to_plotly_json())
        _TEMPLATE_JSON[name] = hit
    return hit[1]


def resolve_colorscale(scale):
    """A named scale ('Viridis', 'RdBu_r', 'Magma') as the explicit [[pos, colour]] list plotly.js needs:
    without validation nothing else expands Python-only names or the '_r' suffix."""
    return get_colorscale(scale) if isinstance(scale, str) else scale


def _resolve_scales(d: dict) -> None:
    if isinstance(d.get("colorscale"), str):
        d["colorscale"] = resolve_colorscale(d["colorscale"])
    if isinstance(d.get("marker"), dict) and isinstance(d["marker"].get("colorscale"), str):
        d["marker"] = dict(d["marker"], colorscale=resolve_colorscale(d["marker"]["colorscale"]))


def make_figure(traces: list, layout: dict, template: str = SCREEN) -> go.Figure:
    """go.Figure from plain trace/layout dicts without plotly's per-property validation (an order of
    magnitude faster for big arrays). Builders pass only known-good properties; tests check them."""
    traces = [dict(t) for t in traces]
    for t in traces:
        _resolve_scales(t)
    lay = dict(layout)
    for key in [k for k in lay if k.startswith("coloraxis")]:
        lay[key] = dict(lay[key])
        _resolve_scales(lay[key])
    lay["template"] = template_json(template)
    return go.Figure(data=traces, layout=lay, _validate=False)


def empty_figure(message: str, template: str = SCREEN, height: int = 260) -> go.Figure:
    """A blank figure with a centred message (used for 'not available yet' and errors)."""
    message = escape_markup(message)
    return make_figure([], dict(
        height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=10, r=10, t=10, b=10),
        annotations=[dict(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                          font=dict(size=14, color="#555"))]), template)


def gaps(*segments: np.ndarray) -> np.ndarray:
    """Concatenate polyline pieces with NaN separators (one line trace draws them all, gaps between)."""
    if not segments:
        return np.zeros(0)
    out = []
    for s in segments:
        out.append(np.asarray(s, float))
        out.append(np.array([np.nan]))
    return np.concatenate(out)


def f32(a) -> np.ndarray:
    """Figures carry float32 (base64 'bdata' in the JSON: half the bytes of float64)."""
    return np.asarray(a, dtype=np.float32)


def weight_bins(w: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin index 0..n_bins-1 by weight quantiles: a line trace has one width, so edges go into a
    few traces of increasing width/opacity."""
    w = np.asarray(w, dtype=float)
    if w.size == 0:
        return np.zeros(0, dtype=int)
    edges = np.quantile(w, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, w, side="right")
