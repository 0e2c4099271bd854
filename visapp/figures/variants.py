"""Variant comparison figures: one head's maps side by side (shared scale) and a diverging difference."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import DIVERGING, SCREEN, SEQUENTIAL
from .common import escape_all, escape_markup, f32, make_figure
from .heatmap import LOG_FLOOR, causal_blank, colorbar, log_colorbar, log_values
from .profiles import baseline_legend

GAP = 0.03


def maps_side_by_side(maps: Mapping[str, np.ndarray], labels: Sequence[str], *, causal: bool = True,
                      log: bool = True, start: int = 0, title: str = "", template: str = SCREEN,
                      colorscale: str = SEQUENTIAL, height: int = 420) -> go.Figure:
    """Each map [n, n] in its own panel, all on one colour axis (log10 by default)."""
    names = list(maps)
    labels, title = escape_all(labels), escape_markup(title)
    k = len(names)
    width = (1 - GAP * (k - 1)) / k
    pos = np.arange(start, start + len(labels))
    show_ticks = len(labels) <= 64
    traces, layout, notes = [], {}, []
    for c, key in enumerate(names):
        z = f32(maps[key])
        name = escape_markup(key)
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
               else dict(cmin=0, colorbar=colorbar("a")))
    layout.update(title=dict(text=title), height=height, coloraxis=cax, annotations=notes,
                  yaxis=dict(autorange="reversed", type="category", showticklabels=show_ticks))
    return make_figure(traces, layout, template)


def difference_map(a: np.ndarray, b: np.ndarray, labels: Sequence[str], *, causal: bool = True, start: int = 0,
                   name_a: str = "variant", name_b: str = "softmax", title: str = "", template: str = SCREEN,
                   colorscale: str = DIVERGING, limit: Optional[float] = None, height: int = 420) -> go.Figure:
    """a - b on a diverging scale centred on 0, symmetric range (robust: 99.5th percentile of |a - b|).
    The colour bar carries the unit (Δa, a difference of attention weights); the title names a and b."""
    d = f32(a) - f32(b)
    pos = np.arange(start, start + len(labels))
    if causal:
        d = causal_blank(d, pos, pos)
    finite = np.abs(d[np.isfinite(d)])
    lim = limit or (float(np.quantile(finite, 0.995)) if finite.size else 1.0) or 1e-6
    ticks = len(labels) <= 64
    labels = escape_all(labels)
    name_a, name_b = escape_markup(name_a), escape_markup(name_b)
    trace = dict(type="heatmap", z=d, x=list(labels), y=list(labels), colorscale=colorscale, zmid=0, zmin=-lim,
                 zmax=lim, zsmooth=False, hoverongaps=False, colorbar=colorbar("Δa"),
                 hovertemplate=f"query %{{y}}<br>key %{{x}}<br>{name_a} − {name_b}: Δa = %{{z:.4g}}<extra></extra>")
    layout = dict(title=dict(text=escape_markup(title) or f"{name_a} − {name_b}"), height=height,
                  yaxis=dict(autorange="reversed", type="category", showticklabels=ticks),
                  xaxis=dict(type="category", showticklabels=ticks, tickangle=-60))
    return make_figure([trace], layout, template)


def pick_variant(maps: Mapping[str, np.ndarray], variant: Optional[str] = None, baseline: str = "softmax") -> str:
    """The variant a difference map shows: `variant` when given, else the first map that is not the
    baseline. ValueError (one line) when it is missing."""
    others = [k for k in maps if k != baseline]
    if not others:
        raise ValueError("no variant map to compare with " + baseline)
    if variant is None or variant == "":
        return others[0]
    if variant not in others:
        raise ValueError(f"variant {variant!r} is not in this comparison (have: {', '.join(others)})")
    return variant


def variant_difference_map(maps: Mapping[str, np.ndarray], labels: Sequence[str], *, variant: Optional[str] = None,
                           baseline: str = "softmax", **kw) -> go.Figure:
    """difference_map of maps[variant] - maps[baseline]; variant defaults to the first non-baseline map
    (the page passes the user's choice)."""
    name = pick_variant(maps, variant, baseline)
    return difference_map(maps[name], maps[baseline], labels, name_a=name, name_b=baseline, **kw)


def e2e_bars(names: Sequence[str], loss: Sequence[Optional[float]], agreement: Sequence[Optional[float]],
             base_loss: Optional[float] = None, *, title: str = "", template: str = SCREEN,
             height: int = 420) -> go.Figure:
    """Two panels: loss with each variant swapped in (the softmax loss dashed, named in the legend rather
    than written over the bars) and top-1 agreement with softmax."""
    names = escape_all(names)
    arr = lambda vs: np.array([np.nan if v is None else float(v) for v in vs], float)   # noqa: E731
    traces = [dict(type="bar", x=list(names), y=arr(loss), name="loss", marker=dict(color="#0072B2"),
                   xaxis="x", yaxis="y", showlegend=False, hovertemplate="%{x}<br>loss %{y:.4f}<extra></extra>"),
              dict(type="bar", x=list(names), y=arr(agreement), name="top-1 agreement",
                   marker=dict(color="#009E73"), xaxis="x2", yaxis="y2", showlegend=False,
                   hovertemplate="%{x}<br>agreement %{y:.3f}<extra></extra>")]
    shapes = []
    if base_loss is not None:
        shapes.append(dict(type="line", x0=0, x1=0.42, xref="paper", y0=base_loss, y1=base_loss, yref="y",
                           line=dict(color="#000", dash="dash", width=1.5)))
        traces.append(baseline_legend(base_loss, "softmax loss"))
    layout = dict(title=dict(text=escape_markup(title)), height=height, showlegend=base_loss is not None,
                  shapes=shapes, legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"),
                  xaxis=dict(domain=[0, 0.42]), xaxis2=dict(domain=[0.58, 1]),
                  yaxis=dict(title=dict(text="loss (nats)")),
                  yaxis2=dict(anchor="x2", range=[0, 1.02], title=dict(text="top-1 agreement")))
    return make_figure(traces, layout, template)


# Why a fidelity number can be absent, by metric and variant family (the table says so, never a blank).
MISSING_REASONS = {
    ("retained", "linear"): "n/a: linear attention keeps every key",
    ("retained", "fitted"): "n/a: linear attention keeps every key",
    ("retained", "reweight"): "n/a: reweighting keeps every key",
    ("retained", "reference"): "n/a: keeps every key",
    ("kept", "linear"): "n/a: linear attention keeps every key",
    ("kept", "fitted"): "n/a: linear attention keeps every key",
}


def fidelity_text(head_value: Optional[float], mean_value: Optional[float], metric: str,
                  family: Optional[str] = None) -> str:
    """One fidelity-table cell: 'head (mean)', '–' for a head not measured, or the reason the metric does
    not apply to this variant family ('n/a: ...'); never blank."""
    if head_value is None and mean_value is None:
        return MISSING_REASONS.get((metric, family or ""), "n/a: not computed for this variant")
    head = "–" if head_value is None else f"{head_value:.4g}"
    return head + ("" if mean_value is None else f" ({mean_value:.3g})")
