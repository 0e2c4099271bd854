"""AttentionViz scatter of one head's joint query/key embedding (compute/embedding.py's dict).

WebGL (scattergl) so thousands of points stay responsive. Colour by:
  kind      query / key (Okabe-Ito orange / blue)
  position  relative position in its text, position / (tokens - 1), on viridis (0 = start)
  token     the 7 most frequent tokens get a colour each, the rest grey
  text      the 7 texts with most points get a colour each, the rest grey
  group     a label per text (groups={text id: label}, e.g. the shipped corpus's kinds), 7 colours + grey
Queries are circles and keys squares whatever the colour, so both stay readable. Hover shows the
token's context; customdata = [text_id, position, kind] so a click can open the text at that token.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import plotly.graph_objects as go

from ..templates import OKABE_ITO, SCREEN, SEQUENTIAL
from .common import empty_figure, f32, make_figure
from .corpus import escape

COLOR_BY = ("kind", "position", "token", "text", "group")
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


def embedding_scatter(emb: dict, color_by: str = "kind", *, groups: Optional[dict] = None,
                      template: str = SCREEN, title: str = "", height: int = 560) -> go.Figure:
    if color_by not in COLOR_BY:
        raise ValueError(f"colour by one of {', '.join(COLOR_BY)}, not {color_by!r}")
    if color_by == "group" and not groups:
        raise ValueError("colour by group needs groups={text id: label}")
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
        if color_by == "group":
            def label(p):
                g = groups.get(p["text_id"])
                return "(none)" if g is None else str(g)
        else:
            key = "token" if color_by == "token" else "text_id"

            def label(p):
                return p[key]
        top = [v for v, _ in Counter(label(p) for p in pts).most_common(N_CATEGORIES)]
        rest = [p for p in pts if label(p) not in top]
        if rest:
            traces.append(_trace(rest, "other", OTHER, marker_extra=dict(opacity=0.4)))
        for i, v in enumerate(top):
            traces.append(_trace([p for p in pts if label(p) == v], v, OKABE_ITO[i % len(OKABE_ITO)]))
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


def head_matrix(emb_layer: dict, *, cols: int | None = None, template: str = SCREEN,
                cell_px: int = 190) -> go.Figure:
    """AttentionViz's matrix view: one small query/key scatter per head of a layer (embed_layer's dict),
    queries orange, keys blue; customdata = [text_id, position, kind, head] so a click opens that head."""
    heads = emb_layer.get("heads") or []
    if not heads:
        return empty_figure("no heads to show", template)
    n = len(heads)
    cols = cols or min(n, 6)
    rows = -(-n // cols)
    by_head: dict[int, list] = {}
    for p in emb_layer["points"]:
        by_head.setdefault(int(p["head"]), []).append(p)
    gap = 0.02
    w, h = (1 - gap * (cols - 1)) / cols, (1 - gap * (rows - 1)) / rows
    traces, layout, notes = [], {}, []
    for i, info in enumerate(heads):
        r, c = divmod(i, cols)
        ax = "" if i == 0 else str(i + 1)
        x0, y1 = c * (w + gap), 1 - r * (h + gap)
        layout[f"xaxis{ax}"] = dict(domain=[x0, x0 + w], anchor=f"y{ax}", showticklabels=False, showgrid=False,
                                    zeroline=False)
        layout[f"yaxis{ax}"] = dict(domain=[y1 - h, y1], anchor=f"x{ax}", showticklabels=False, showgrid=False,
                                    zeroline=False)
        notes.append(dict(text=f"head {info['head']}", x=x0 + w / 2, y=y1, xref="paper", yref="paper",
                          xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=11)))
        pts = by_head.get(int(info["head"]), [])
        for kind in ("query", "key"):
            sel = [p for p in pts if p["kind"] == kind]
            if not sel:
                continue
            t = _trace(sel, kind, KIND_COLORS[kind], showlegend=i == 0, marker_extra=dict(size=3))
            t.update(xaxis=f"x{ax}", yaxis=f"y{ax}", legendgroup=kind,
                     customdata=[[p["text_id"], int(p["position"]), p["kind"], int(info["head"])] for p in sel])
            traces.append(t)
    layout.update(title=dict(text=escape(f"layer {emb_layer.get('layer')}: queries and keys per head, "
                                         f"{str(emb_layer.get('method', '')).upper()}")),
                  annotations=notes, height=int(80 + rows * cell_px), hovermode="closest", clickmode="event",
                  legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0, itemsizing="constant"))
    return make_figure(traces, layout, template)
