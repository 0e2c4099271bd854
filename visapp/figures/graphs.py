"""Graph figures: head-similarity graph with communities, token attention arcs, dependency arcs vs
attention. Vector `scatter` traces (exportable as SVG/PDF); edges are a few traces of NaN-separated
segments binned by weight, since one line trace has one width."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import SCREEN, category_style as community_style
from .common import escape_all, escape_markup, f32, gaps, make_figure, show_token, token_label, weight_bins

EDGE_WIDTHS = (0.6, 1.2, 2.2, 3.5)
EDGE_ALPHA = (0.25, 0.4, 0.6, 0.85)
ARC_POINTS = 16
# Token line: a window of up to NODE_MAX tokens draws and labels every token; a longer one (a 512-token
# zoom would be a solid bar of markers) draws and labels only NODE_MAX tokens, those of the strongest arcs.
NODE_MAX = 128


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
        colour, symbol = community_style(c)
        traces.append(dict(
            type="scatter", x=pos[m, 0], y=pos[m, 1], mode="markers+text" if n <= 60 else "markers",
            name=f"community {c}", text=[f"{l}.{h}" for l, h in lh[m]], textposition="top center",
            textfont=dict(size=9), customdata=lh[m].tolist(),
            hovertemplate=f"layer %{{customdata[0]}} head %{{customdata[1]}}<br>community {c}<extra></extra>",
            marker=dict(size=11, color=colour, symbol=symbol, line=dict(width=0.6, color="#222"))))
    if selected is not None:
        hit = np.nonzero((lh[:, 0] == selected[0]) & (lh[:, 1] == selected[1]))[0]
        if hit.size:
            i = hit[0]
            traces.append(dict(type="scatter", x=[pos[i, 0]], y=[pos[i, 1]], mode="markers", hoverinfo="skip",
                               showlegend=False, marker=dict(size=22, symbol="circle-open", color="#d00",
                                                             line=dict(width=3))))
    layout = dict(title=dict(text=escape_markup(title)), height=height, hovermode="closest", xaxis=dict(visible=False),
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


def arc_nodes(n_window: int, edges: Sequence[tuple[int, int, float]], lo: int,
              node_values: Optional[np.ndarray] = None) -> tuple[np.ndarray, list]:
    """(token positions that get a node, the edges drawn). A window of up to NODE_MAX tokens: every token,
    every edge. A longer one: the strongest edges whose end points fit in NODE_MAX nodes, topped up with
    the tokens receiving most (node_values)."""
    if n_window <= NODE_MAX:
        return np.arange(lo, lo + n_window), list(edges)
    keep: dict[int, None] = {}
    kept = []
    for e in sorted(edges, key=lambda e: -float(e[2])):
        new = {int(e[0]), int(e[1])} - keep.keys()
        if len(keep) + len(new) > NODE_MAX:
            continue
        keep.update(dict.fromkeys(sorted(new)))
        kept.append(e)
    if node_values is not None and len(keep) < NODE_MAX:
        v = np.nan_to_num(np.asarray(node_values[lo:lo + n_window], float), nan=-np.inf)
        for j in np.argsort(-v, kind="stable"):
            if len(keep) >= NODE_MAX:
                break
            keep.setdefault(lo + int(j), None)
    return np.array(sorted(keep), dtype=int), kept


def arc_diagram(tokens: Sequence[str], upper: Sequence[tuple[int, int, float]], *,
                lower: Sequence[tuple[int, int, float]] = (), upper_name: str = "attention",
                lower_name: str = "dependency", title: str = "", template: str = SCREEN,
                node_values: Optional[np.ndarray] = None, node_label: str = "", height: int = 380,
                window: Optional[tuple[int, int]] = None, node_cmax: Optional[float] = None) -> go.Figure:
    """Tokens on a line; arcs above (e.g. attention query -> key, width by weight) and below (e.g. the
    dependency parse). Edges are (a, b, weight) with token indices. `window` limits the shown tokens.

    Every drawn token gets its text on the axis (whitespace made visible). A window of more than NODE_MAX
    tokens draws only the tokens of its strongest arcs (then the most attended ones), at most NODE_MAX,
    and says so above the plot."""
    n = len(tokens)
    lo, hi = window if window is not None else (0, n)
    lo, hi = max(0, int(lo)), min(n, int(hi))
    inside = lambda e: lo <= e[0] < hi and lo <= e[1] < hi   # noqa: E731
    up = [e for e in upper if inside(e)]
    down = [e for e in lower if inside(e)]
    x, drawn = arc_nodes(hi - lo, up + down, lo, node_values)
    n_dropped = len(up) + len(down) - len(drawn)
    if n_dropped:
        ids = {id(e) for e in drawn}
        up, down = [e for e in up if id(e) in ids], [e for e in down if id(e) in ids]
    upper_name, lower_name = escape_markup(upper_name), escape_markup(lower_name)
    traces = _arc_traces(up, True, "#0072B2", upper_name)
    traces += _arc_traces(down, False, "#D55E00", lower_name)
    traces.append(dict(type="scatter", x=[None], y=[None], mode="lines", name=upper_name,
                       line=dict(color="#0072B2", width=2)))
    if lower:
        traces.append(dict(type="scatter", x=[None], y=[None], mode="lines", name=lower_name,
                           line=dict(color="#D55E00", width=2)))
    capped = len(x) < hi - lo
    nv = f32(np.asarray(node_values)[x]) if node_values is not None else None
    marker = dict(size=8 if len(x) <= 90 else 6, color=nv if nv is not None else "#444")
    if nv is not None:
        marker.update(colorscale="Viridis", cmin=0, showscale=True,
                      colorbar=dict(title=dict(text=escape_markup(node_label), side="right"), len=0.6))
        if node_cmax is not None:
            marker["cmax"] = node_cmax
    hover = escape_all(token_label(int(i), tokens[i]) for i in x)
    traces.append(dict(type="scatter", x=x, y=np.zeros(len(x)), mode="markers", customdata=hover,
                       showlegend=False, marker=marker,
                       hovertemplate="%{customdata}" + (f"<br>{escape_markup(node_label)} = %{{marker.color:.3f}}"
                                                        if nv is not None else "") + "<extra></extra>"))
    # every drawn token labelled, rotated, smaller as they crowd
    xaxis = dict(showgrid=False, zeroline=False, range=[lo - 1, hi], tickmode="array", tickvals=x.tolist(),
                 ticktext=escape_all(show_token(tokens[i]) for i in x), tickangle=-90,
                 tickfont=dict(size=10 if len(x) <= 60 else 8 if len(x) <= 110 else 7))
    notes = []
    if capped:
        what = f"{len(x)} of {hi - lo} tokens drawn (those of the strongest arcs" + \
            (", then the most attended)" if node_values is not None else ")") + \
            (f"; the {len(drawn)} strongest arcs of {len(drawn) + n_dropped}" if n_dropped else "")
        notes.append(dict(text=what, x=0, y=1.0, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                          showarrow=False, font=dict(size=11, color="#555")))
    title = escape_markup(title)
    layout = dict(title=dict(text=title), height=height + 60, hovermode="closest",
                  xaxis=xaxis, yaxis=dict(visible=False), annotations=notes,
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    return make_figure(traces, layout, template)
