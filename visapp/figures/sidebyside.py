"""Side-by-side figures from compute/sidebyside.compare's dict (diff.json).

delta_map       B - A of one metric per head, diverging scale centred on 0 with a symmetric range;
                when the grids differ (two architectures) the layer profiles of both instead
layer_profiles  mean over heads per layer of A and B against relative depth (l + 0.5) / L
match_map       JS distance of each head of A to its matched head of B (which heads changed most)
match_table     the matches as a table (head of A, matched head of B, JS, nearest head, its JS), most
                changed first
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go

from ..templates import DIVERGING, OKABE_ITO, SCREEN, SEQUENTIAL
from .common import empty_figure, f32, make_figure
from .corpus import escape
from .overview import layer_head_map


def _arr(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def delta_map(diff: dict, metric: str, *, selected: Optional[tuple[int, int]] = None,
              template: str = SCREEN) -> go.Figure:
    if metric not in diff["metrics"]:
        raise ValueError(f"no metric {metric!r} in the comparison")
    if diff.get("deltas") is None:
        return layer_profiles(diff, metric, template=template)
    d = _arr(diff["deltas"][metric])
    lim = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0
    lim = lim if lim > 0 else 1e-9
    a, b = diff["a"]["label"], diff["b"]["label"]            # plain: layer_head_map escapes its title
    return layer_head_map(d, label=f"Δ {metric}", selected=selected, template=template, colorscale=DIVERGING,
                          zmin=-lim, zmax=lim, zmid=0.0, title=f"{metric}: {b} − {a}")


def layer_profiles(diff: dict, metric: str, *, template: str = SCREEN) -> go.Figure:
    if metric not in diff["layer_profiles"]:
        raise ValueError(f"no metric {metric!r} in the comparison")
    prof = diff["layer_profiles"][metric]
    traces = []
    for i, side in enumerate(("a", "b")):
        y = [np.nan if v is None else v for v in prof[side]]
        label = escape(diff[side]["label"])
        traces.append(dict(type="scatter", mode="lines+markers", name=label, x=f32(diff["depth"][side]), y=f32(y),
                           line=dict(color=OKABE_ITO[4 if i == 0 else 5], width=2,
                                     dash="solid" if i == 0 else "dash"),
                           marker=dict(symbol="circle" if i == 0 else "square", size=6),
                           customdata=list(range(len(y))),
                           hovertemplate=label + "<br>layer %{customdata}<br>" + escape(metric)
                           + " = %{y:.3f}<extra></extra>"))
    layout = dict(title=dict(text=f"{escape(metric)} per layer (mean over heads)"),
                  xaxis=dict(title=dict(text="relative depth (layer + 0.5) / layers"), range=[0, 1]),
                  yaxis=dict(title=dict(text=escape(metric))), height=360, hovermode="closest",
                  legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return make_figure(traces, layout, template)


def _head(name: Optional[str]) -> Optional[tuple[int, int]]:
    if name is None:
        return None
    l, h = name.split(".")
    return int(l), int(h)


def match_map(diff: dict, *, nearest: bool = False, selected: Optional[tuple[int, int]] = None,
              template: str = SCREEN) -> go.Figure:
    """[L_A, H_A] JS distance of each head of A to its Hungarian partner (or nearest head) in B."""
    if not diff["matches"]:
        return empty_figure(escape(diff["matching"]["reason"]), template)
    L, H = diff["a"]["n_layers"], diff["a"]["n_heads"]
    z = np.full((L, H), np.nan)
    key = "nearest_js" if nearest else "js"
    for m in diff["matches"]:
        l, h = _head(m["a"])
        if m[key] is not None:
            z[l, h] = m[key]
    what = "nearest head" if nearest else "matched head"
    return layer_head_map(z, label="JS distance", selected=selected, template=template, colorscale=SEQUENTIAL,
                          zmin=0.0, zmax=max(1e-9, float(np.nanmax(z)) if np.isfinite(z).any() else 1.0),
                          title=f"heads of {escape(diff['a']['label'])}: JS distance to the {what} of "
                                f"{escape(diff['b']['label'])}")


def match_rows(diff: dict, limit: Optional[int] = None) -> list[dict]:
    """The matches sorted by JS distance to the partner, largest first (unmatched heads last)."""
    rows = sorted(diff["matches"], key=lambda m: (m["js"] is None, -(m["js"] or 0.0), m["a"]))
    return rows[:limit] if limit else rows


def match_table(diff: dict, *, limit: Optional[int] = 50, template: str = SCREEN) -> go.Figure:
    if not diff["matches"]:
        return empty_figure(escape(diff["matching"]["reason"]), template)
    rows = match_rows(diff, limit)

    def fmt(x):
        return "–" if x is None else f"{x:.3f}"

    cols = [[m["a"] for m in rows], [m["b"] or "–" for m in rows], [fmt(m["js"]) for m in rows],
            [m["nearest"] for m in rows], [fmt(m["nearest_js"]) for m in rows]]
    a, b = escape(diff["a"]["label"]), escape(diff["b"]["label"])
    header = [f"head of {a}", f"matched head of {b}", "JS distance", f"nearest head of {b}", "nearest JS"]
    trace = dict(type="table", header=dict(values=header, align="left", fill=dict(color="#EBF0F8"),
                                           font=dict(size=12)),
                 cells=dict(values=cols, align="left", height=22, font=dict(size=12)))
    layout = dict(title=dict(text=f"heads matched by Jensen-Shannon distance ({escape(diff['matching']['source'] or '')}"
                                  f" maps), most changed first"),
                  height=int(min(900, 120 + 22 * len(rows))), margin=dict(l=10, r=10, t=40, b=10))
    return make_figure([trace], layout, template)
