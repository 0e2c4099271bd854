"""AttentionViz scatter of one head's joint query/key embedding (compute/embedding.py's dict).

WebGL (scattergl) so thousands of points stay responsive. Colour by:
  kind      query / key (Okabe-Ito orange / blue)
  position  relative position in its text, position / (tokens - 1), on viridis (0 = start)
  token     the 7 most frequent tokens get a colour each, the rest grey
  text      the 7 texts with most points get a colour each, the rest grey
Queries are circles and keys squares whatever the colour, so both stay readable. Hover shows the
token's context; customdata = [text_id, position, kind] so a click can open the text at that token.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import plotly.graph_objects as go

from ..templates import OKABE_ITO, SCREEN, SEQUENTIAL
from .common import empty_figure, f32, make_figure
from .corpus import escape

COLOR_BY = ("kind", "position", "token", "text")
N_CATEGORIES = 7
OTHER = "#BBBBBB"
KIND_COLORS = {"query": OKABE_ITO[0], "key": OKABE_ITO[4]}
KIND_SYMBOLS = {"query": "circle", "key": "square"}


def _hover(pts) -> tuple[list, list]:
    text = [f"<b>{p['kind']}</b> {escape(p['token'])} · {escape(p['text_id'])} @{p['position']}<br>"
            f"{escape(p.get('context', p['token']))}" for p in pts]
    custom = [[p["text_id"], int(p["position"]), p["kind"]] for p in pts]
    return text, custom


def _trace(pts, name: str, color, *, showlegend: bool = True, marker_extra: dict | None = None) -> dict:
    text, custom = _hover(pts)
    marker = dict(size=6, opacity=0.75, color=color, symbol=[KIND_SYMBOLS[p["kind"]] for p in pts],
                  line=dict(width=0))
    marker.update(marker_extra or {})
    return dict(type="scattergl", mode="markers", name=escape(name), x=f32([p["x"] for p in pts]),
                y=f32([p["y"] for p in pts]), text=text, customdata=custom, showlegend=showlegend,
                hovertemplate="%{text}<extra></extra>", marker=marker)


def embedding_scatter(emb: dict, color_by: str = "kind", *, template: str = SCREEN, title: str = "",
                      height: int = 560) -> go.Figure:
    if color_by not in COLOR_BY:
        raise ValueError(f"colour by one of {', '.join(COLOR_BY)}, not {color_by!r}")
    pts = emb.get("points") or []
    if not pts:
        return empty_figure("no points to show", template)
    traces = []
    if color_by == "kind":
        for kind in ("query", "key"):
            sel = [p for p in pts if p["kind"] == kind]
            if sel:
                traces.append(_trace(sel, kind, KIND_COLORS[kind]))
    elif color_by == "position":
        lengths = dict(emb.get("text_lengths") or {})
        for p in pts:                        # without lengths: the last position seen stands in
            if p["text_id"] not in lengths or lengths[p["text_id"]] <= p["position"]:
                lengths[p["text_id"]] = p["position"] + 1
        rel = [p["position"] / max(1, lengths[p["text_id"]] - 1) for p in pts]
        traces.append(_trace(pts, "relative position", f32(rel), showlegend=False, marker_extra=dict(
            colorscale=SEQUENTIAL, cmin=0.0, cmax=1.0,
            colorbar=dict(title=dict(text="position / length", side="right")))))
    else:
        key = "token" if color_by == "token" else "text_id"
        top = [v for v, _ in Counter(p[key] for p in pts).most_common(N_CATEGORIES)]
        rest = [p for p in pts if p[key] not in top]
        if rest:
            traces.append(_trace(rest, "other", OTHER, marker_extra=dict(opacity=0.4)))
        for i, v in enumerate(top):
            traces.append(_trace([p for p in pts if p[key] == v], v, OKABE_ITO[i % len(OKABE_ITO)]))
    # legend entries for the two symbols when colour does not already say query/key
    if color_by != "kind":
        for kind in ("query", "key"):
            traces.append(dict(type="scattergl", mode="markers", x=[None], y=[None], name=f"{kind} ({KIND_SYMBOLS[kind]})",
                               hoverinfo="skip", marker=dict(color="#555", symbol=KIND_SYMBOLS[kind], size=8)))
    method = str(emb.get("method", "")).upper()
    head = f"layer {emb.get('layer')} head {emb.get('head')}" if "layer" in emb else ""
    layout = dict(
        title=dict(text=title or escape(f"{head}: queries and keys, {method} ({emb.get('n_points', len(pts))} points)")),
        xaxis=dict(title=dict(text=f"{method} 1"), zeroline=False, showgrid=False),
        yaxis=dict(title=dict(text=f"{method} 2"), zeroline=False, showgrid=False, scaleanchor="x"
                   if emb.get("method") == "pca" else None),
        height=height, hovermode="closest", clickmode="event", dragmode="zoom",
        legend=dict(itemsizing="constant", title=dict(text=color_by)))
    if layout["yaxis"]["scaleanchor"] is None:
        del layout["yaxis"]["scaleanchor"]
    return make_figure(traces, layout, template)


def point_arrays(fig: go.Figure) -> np.ndarray:
    """All plotted (x, y) of real points (legend stubs left out): used by tests and exports."""
    xs = [np.column_stack([np.asarray(t.x, float), np.asarray(t.y, float)]) for t in fig.data
          if t.x is not None and len(t.x) and t.x[0] is not None]
    return np.concatenate(xs) if xs else np.zeros((0, 2))
