"""Dodrio-style head overview: a layers x heads grid of glyphs, and generic layer x head maps.

Colour = any per-head metric, size = importance (when known), symbol = role, with a role legend.
Each glyph carries customdata [layer, head] so a click selects that head everywhere.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import SCREEN, SEQUENTIAL
from .common import escape_markup, f32, make_figure

ROLE_SYMBOLS = {
    "sink": "square", "previous-token": "triangle-left", "local": "hexagon", "broad": "diamond-tall",
    "induction": "star", "retrieval": "diamond", "delimiter": "cross", "syntactic": "triangle-up",
    "mixed": "circle", "unknown": "circle",
}
MIN_SIZE, MAX_SIZE = 7.0, 24.0
# Flag marks on a heatmap: a black x with a light outline reads on dark and light cells and on the white
# legend (the old white-only mark was invisible there).
FLAG_MARKER = dict(symbol="x", size=10, color="#000000", line=dict(width=1.2, color="#f2f2f2"))


def glyph_sizes(importance: Optional[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Marker sizes: sqrt-scaled so the glyph area follows importance; constant without it."""
    if importance is None:
        return np.full(shape, 16.0)
    imp = np.nan_to_num(np.abs(np.asarray(importance, dtype=float)))
    top = imp.max()
    if top <= 0:
        return np.full(shape, MIN_SIZE)
    return MIN_SIZE + (MAX_SIZE - MIN_SIZE) * np.sqrt(imp / top)


def head_grid(values: np.ndarray, *, metric: str, roles: Optional[Sequence[Sequence[str]]] = None,
              importance: Optional[np.ndarray] = None, selected: Optional[tuple[int, int]] = None,
              hover: Optional[Mapping[str, np.ndarray]] = None, template: str = SCREEN,
              colorscale: str = SEQUENTIAL, cmin: Optional[float] = None, cmax: Optional[float] = None,
              title: str = "") -> go.Figure:
    """values [L, H] -> scatter grid (x = head, y = layer; layer 0 on top)."""
    v = np.asarray(values, dtype=float)
    L, H = v.shape
    metric, title = escape_markup(metric), escape_markup(title)
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    sizes = glyph_sizes(importance, (L, H))
    role = np.array(roles, dtype=object) if roles is not None else np.full((L, H), "unknown", dtype=object)
    hover = {escape_markup(k): a for k, a in (hover or {}).items()}
    names = list(hover)
    extra = np.stack([np.asarray(hover[k], dtype=float) for k in names], -1) if names else np.zeros((L, H, 0))
    finite = v[np.isfinite(v)]
    lo = cmin if cmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = cmax if cmax is not None else (float(finite.max()) if finite.size else 1.0)
    lines = "".join(f"<br>{k} = %{{customdata[{4 + i}]:.3f}}" for i, k in enumerate(names))
    tmpl = ("<b>layer %{customdata[0]} head %{customdata[1]}</b><br>role: %{customdata[2]}"
            f"<br>{metric} = %{{customdata[3]:.3f}}{lines}<extra></extra>")
    traces = []
    kinds = list(dict.fromkeys(role.ravel().tolist()))
    for r in kinds:
        m = role == r
        custom = [[int(a), int(b), escape_markup(c), float(d), *map(float, e)]
                  for a, b, c, d, e in zip(layer[m], head[m], role[m], np.nan_to_num(v[m]), extra[m])]
        traces.append(dict(type="scatter", x=head[m], y=layer[m], mode="markers", name=escape_markup(r),
                           showlegend=False,
                           customdata=custom, hovertemplate=tmpl,
                           marker=dict(color=f32(np.nan_to_num(v[m], nan=lo)), coloraxis="coloraxis",
                                       size=sizes[m], symbol=ROLE_SYMBOLS.get(str(r), "circle"),
                                       line=dict(width=0.5, color="#333"))))
    if roles is not None:           # legend entries in neutral grey: colour is the metric, not the role
        for r in kinds:
            traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name=escape_markup(r),
                               hoverinfo="skip",
                               marker=dict(color="#888", size=11, symbol=ROLE_SYMBOLS.get(str(r), "circle"))))
    if selected is not None and 0 <= selected[0] < L and 0 <= selected[1] < H:
        sl, sh = selected
        traces.append(dict(type="scatter", x=[sh], y=[sl], mode="markers", name="selected", hoverinfo="skip",
                           showlegend=False, marker=dict(size=float(sizes[sl, sh]) + 10, symbol="circle-open",
                                                         color="#d00", line=dict(width=3))))
    layout = dict(
        title=dict(text=title),
        coloraxis=dict(colorscale=colorscale, cmin=lo, cmax=hi if hi > lo else lo + 1e-9,
                       colorbar=dict(title=dict(text=metric, side="right"))),
        xaxis=dict(title=dict(text="head"), tickmode="linear", dtick=1, range=[-0.7, H - 0.3], showgrid=False,
                   zeroline=False),
        yaxis=dict(title=dict(text="layer"), range=[L - 0.4, -0.6], tickmode="linear", dtick=1 if L <= 32 else 2,
                   showgrid=False, zeroline=False),
        legend=dict(title=dict(text="role"), orientation="v", x=1.18, y=1),
        height=int(min(900, max(320, 90 + 22 * L))), clickmode="event", hovermode="closest")
    return make_figure(traces, layout, template)


def layer_head_map(values: np.ndarray, *, label: str, selected: Optional[tuple[int, int]] = None,
                   template: str = SCREEN, colorscale: str = SEQUENTIAL, zmin: Optional[float] = None,
                   zmax: Optional[float] = None, zmid: Optional[float] = None, title: str = "",
                   flags: Optional[np.ndarray] = None, flag_name: str = "flagged") -> go.Figure:
    """values [L, H] as a heatmap (layer rows, head columns); flags [L, H] bool are marked with an x."""
    v = f32(values)
    L, H = v.shape
    label, flag_name, title = escape_markup(label), escape_markup(flag_name), escape_markup(title)
    hm = dict(type="heatmap", z=v, x=np.arange(H), y=np.arange(L), colorscale=colorscale, zsmooth=False,
              hoverongaps=False, colorbar=dict(title=dict(text=label, side="right")),
              hovertemplate=f"layer %{{y}} head %{{x}}<br>{label} = %{{z:.3f}}<extra></extra>")
    for k, val in (("zmin", zmin), ("zmax", zmax), ("zmid", zmid)):
        if val is not None:
            hm[k] = val
    traces = [hm]
    has_flags = flags is not None and bool(np.any(flags))
    if has_flags:
        fl, fh = np.nonzero(np.asarray(flags))
        traces.append(dict(type="scatter", x=fh, y=fl, mode="markers", name=flag_name, hoverinfo="skip",
                           marker=FLAG_MARKER))
    shapes = []
    if selected is not None and 0 <= selected[0] < L and 0 <= selected[1] < H:
        sl, sh = selected
        shapes.append(dict(type="rect", x0=sh - 0.5, x1=sh + 0.5, y0=sl - 0.5, y1=sl + 0.5,
                           line=dict(color="#d00", width=3)))
    layout = dict(title=dict(text=title), shapes=shapes,
                  xaxis=dict(title=dict(text="head"), tickmode="linear", dtick=1, showgrid=False),
                  yaxis=dict(title=dict(text="layer"), range=[L - 0.5, -0.5], showgrid=False,
                             tickmode="linear", dtick=1 if L <= 32 else 2),
                  height=int(min(900, max(300, 90 + 20 * L))), showlegend=has_flags,
                  legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    return make_figure(traces, layout, template)
