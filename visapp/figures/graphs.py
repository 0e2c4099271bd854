"""Graph figures: head-similarity graph with communities, token attention arcs, dependency arcs vs
attention. Vector `scatter` traces (exportable as SVG/PDF); edges are a few traces of NaN-separated
segments binned by weight, since one line trace has one width."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import OKABE_ITO, SCREEN
from .common import f32, gaps, make_figure, show_token, token_labels, weight_bins

EDGE_WIDTHS = (0.6, 1.2, 2.2, 3.5)
EDGE_ALPHA = (0.25, 0.4, 0.6, 0.85)
ARC_POINTS = 16


def head_similarity_graph(pos: np.ndarray, heads: Sequence[tuple[int, int]], edges: Sequence[tuple[int, int, float]],
                          *, communities: Optional[Sequence[int]] = None, selected: Optional[tuple[int, int]] = None,
                          title: str = "", template: str = SCREEN, height: int = 560) -> go.Figure:
    """Nodes = heads at layout positions pos [n, 2], coloured by community; edges weighted by similarity.
    customdata [layer, head] makes a click select the head."""
    pos = np.asarray(pos, dtype=float)
    n = len(heads)
    comm = np.asarray(communities if communities is not None else np.zeros(n, int))
    traces = []
    if len(edges):
        e = np.asarray([(a, b) for a, b, _ in edges], dtype=int)
        bins = weight_bins(np.asarray([c for _, _, c in edges], dtype=float), len(EDGE_WIDTHS))
        for b in range(len(EDGE_WIDTHS)):
            sel = e[bins == b]
            if len(sel) == 0:
                continue
            xs = gaps(*[pos[[i, j], 0] for i, j in sel])
            ys = gaps(*[pos[[i, j], 1] for i, j in sel])
            traces.append(dict(type="scatter", x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                               line=dict(width=EDGE_WIDTHS[b], color=f"rgba(80,80,80,{EDGE_ALPHA[b]})")))
    lh = np.asarray(heads, dtype=int).reshape(-1, 2)
    for c in sorted(set(comm.tolist())):
        m = comm == c
        traces.append(dict(
            type="scatter", x=pos[m, 0], y=pos[m, 1], mode="markers+text" if n <= 60 else "markers",
            name=f"community {c}", text=[f"{l}.{h}" for l, h in lh[m]], textposition="top center",
            textfont=dict(size=9), customdata=lh[m].tolist(),
            hovertemplate=f"layer %{{customdata[0]}} head %{{customdata[1]}}<br>community {c}<extra></extra>",
            marker=dict(size=11, color=OKABE_ITO[c % len(OKABE_ITO)], line=dict(width=0.6, color="#222"))))
    if selected is not None:
        hit = np.nonzero((lh[:, 0] == selected[0]) & (lh[:, 1] == selected[1]))[0]
        if hit.size:
            i = hit[0]
            traces.append(dict(type="scatter", x=[pos[i, 0]], y=[pos[i, 1]], mode="markers", hoverinfo="skip",
                               showlegend=False, marker=dict(size=22, symbol="circle-open", color="#d00",
                                                             line=dict(width=3))))
    layout = dict(title=dict(text=title), height=height, hovermode="closest", xaxis=dict(visible=False),
                  yaxis=dict(visible=False, scaleanchor="x"), legend=dict(orientation="h", y=-0.05))
    return make_figure(traces, layout, template)


def _arc(a: float, b: float, up: bool) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, np.pi, ARC_POINTS)
    cx, r = (a + b) / 2, abs(b - a) / 2
    direction = 1.0 if b >= a else -1.0
    return cx - r * np.cos(t) * direction, (1 if up else -1) * r * np.sin(t) * 0.5


def _arc_traces(edges: Sequence[tuple[int, int, float]], up: bool, colour: str, name: str) -> list[dict]:
    if not edges:
        return []
    bins = weight_bins(np.asarray([e[2] for e in edges], dtype=float), len(EDGE_WIDTHS))
    out = []
    for b in range(len(EDGE_WIDTHS)):
        arcs = [_arc(a, c, up) for (a, c, _), bb in zip(edges, bins) if bb == b]
        if arcs:
            out.append(dict(type="scatter", x=gaps(*[x for x, _ in arcs]), y=gaps(*[y for _, y in arcs]),
                            mode="lines", hoverinfo="skip", name=name, legendgroup=name, showlegend=False,
                            opacity=EDGE_ALPHA[b] + 0.1, line=dict(width=EDGE_WIDTHS[b], color=colour)))
    return out


def arc_diagram(tokens: Sequence[str], upper: Sequence[tuple[int, int, float]], *,
                lower: Sequence[tuple[int, int, float]] = (), upper_name: str = "attention",
                lower_name: str = "dependency", title: str = "", template: str = SCREEN,
                node_values: Optional[np.ndarray] = None, node_label: str = "", height: int = 380,
                window: Optional[tuple[int, int]] = None, node_cmax: Optional[float] = None) -> go.Figure:
    """Tokens on a line; arcs above (e.g. attention query -> key, width by weight) and below (e.g. the
    dependency parse). Edges are (a, b, weight) with token indices. `window` limits the shown tokens."""
    n = len(tokens)
    lo, hi = window if window is not None else (0, n)
    inside = lambda e: lo <= e[0] < hi and lo <= e[1] < hi   # noqa: E731
    traces = _arc_traces([e for e in upper if inside(e)], True, "#0072B2", upper_name)
    traces += _arc_traces([e for e in lower if inside(e)], False, "#D55E00", lower_name)
    traces.append(dict(type="scatter", x=[None], y=[None], mode="lines", name=upper_name,
                       line=dict(color="#0072B2", width=2)))
    if lower:
        traces.append(dict(type="scatter", x=[None], y=[None], mode="lines", name=lower_name,
                           line=dict(color="#D55E00", width=2)))
    x = np.arange(lo, hi)
    nv = f32(node_values[lo:hi]) if node_values is not None else None
    marker = dict(size=8, color=nv if nv is not None else "#444")
    if nv is not None:
        marker.update(colorscale="Viridis", cmin=0, showscale=True,
                      colorbar=dict(title=dict(text=node_label, side="right"), len=0.6))
        if node_cmax is not None:
            marker["cmax"] = node_cmax
    traces.append(dict(type="scatter", x=x, y=np.zeros(len(x)), mode="markers", customdata=token_labels(tokens, lo, hi),
                       showlegend=False, marker=marker,
                       hovertemplate="%{customdata}" + (f"<br>{node_label} = %{{marker.color:.3f}}" if nv is not None
                                                        else "") + "<extra></extra>"))
    few = hi - lo <= 90            # few tokens: label every one on the axis, rotated so they stay legible
    xaxis = dict(showgrid=False, zeroline=False, range=[lo - 1, hi])
    if few:
        xaxis.update(tickmode="array", tickvals=x.tolist(), ticktext=[show_token(tokens[i]) for i in x],
                     tickangle=-90, tickfont=dict(size=10))
    else:
        xaxis.update(title=dict(text="token position"))
    layout = dict(title=dict(text=title), height=height + (60 if few else 0), hovermode="closest", xaxis=xaxis,
                  yaxis=dict(visible=False), legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1,
                                                          xanchor="right"))
    return make_figure(traces, layout, template)
