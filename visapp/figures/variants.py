"""Variant comparison figures: one head's maps side by side (shared scale) and a diverging difference."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import DIVERGING, SCREEN, SEQUENTIAL
from .common import f32, make_figure
from .heatmap import LOG_FLOOR, causal_blank, log_colorbar, log_values

GAP = 0.03


def maps_side_by_side(maps: Mapping[str, np.ndarray], labels: Sequence[str], *, causal: bool = True,
                      log: bool = True, start: int = 0, title: str = "", template: str = SCREEN,
                      colorscale: str = SEQUENTIAL, height: int = 420) -> go.Figure:
    """Each map [n, n] in its own panel, all on one colour axis (log10 by default)."""
    names = list(maps)
    k = len(names)
    width = (1 - GAP * (k - 1)) / k
    pos = np.arange(start, start + len(labels))
    show_ticks = len(labels) <= 64
    traces, layout, notes = [], {}, []
    for c, name in enumerate(names):
        z = f32(maps[name])
        if causal:
            z = causal_blank(z, pos, pos)
        ax = "" if c == 0 else str(c + 1)
        traces.append(dict(type="heatmap", z=log_values(z) if log else z, customdata=z, x=list(labels),
                           y=list(labels), coloraxis="coloraxis", hoverongaps=False, zsmooth=False,
                           xaxis=f"x{ax}", yaxis="y",
                           hovertemplate=f"{name}<br>query %{{y}}<br>key %{{x}}<br>a = %{{customdata:.4g}}"
                                         "<extra></extra>"))
        x0 = c * (width + GAP)
        layout[f"xaxis{ax}"] = dict(domain=[x0, x0 + width], type="category", showticklabels=False)
        notes.append(dict(text=name, x=x0 + width / 2, y=1.0, xref="paper", yref="paper", showarrow=False,
                          yanchor="bottom", font=dict(size=13)))
    cax = dict(colorscale=colorscale)
    cax.update(dict(cmin=float(np.log10(LOG_FLOOR)), cmax=0, colorbar=log_colorbar(LOG_FLOOR)) if log
               else dict(cmin=0, colorbar=dict(title=dict(text="a", side="right"))))
    layout.update(title=dict(text=title), height=height, coloraxis=cax, annotations=notes,
                  yaxis=dict(autorange="reversed", type="category", showticklabels=show_ticks))
    return make_figure(traces, layout, template)


def difference_map(a: np.ndarray, b: np.ndarray, labels: Sequence[str], *, causal: bool = True, start: int = 0,
                   name_a: str = "variant", name_b: str = "softmax", title: str = "", template: str = SCREEN,
                   colorscale: str = DIVERGING, limit: Optional[float] = None, height: int = 420) -> go.Figure:
    """a - b on a diverging scale centred on 0, symmetric range (robust: 99.5th percentile of |a - b|)."""
    d = f32(a) - f32(b)
    pos = np.arange(start, start + len(labels))
    if causal:
        d = causal_blank(d, pos, pos)
    finite = np.abs(d[np.isfinite(d)])
    lim = limit or (float(np.quantile(finite, 0.995)) if finite.size else 1.0) or 1e-6
    ticks = len(labels) <= 64
    trace = dict(type="heatmap", z=d, x=list(labels), y=list(labels), colorscale=colorscale, zmid=0, zmin=-lim,
                 zmax=lim, zsmooth=False, hoverongaps=False,
                 colorbar=dict(title=dict(text=f"{name_a} − {name_b}", side="right")),
                 hovertemplate="query %{y}<br>key %{x}<br>Δa = %{z:.4g}<extra></extra>")
    layout = dict(title=dict(text=title or f"{name_a} − {name_b}"), height=height,
                  yaxis=dict(autorange="reversed", type="category", showticklabels=ticks),
                  xaxis=dict(type="category", showticklabels=ticks, tickangle=-60))
    return make_figure([trace], layout, template)
