"""Line and bar charts: per-query and per-key profiles, per-layer curves, basin U-shapes, bars."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ..templates import OKABE_ITO, SCREEN
from .common import f32, make_figure, token_labels

SINK_COLOUR = "#D55E00"
BAR_COLOUR = "#0072B2"


def _vline(x: float, colour: str = "#999", dash: str = "dot", width: float = 1) -> dict:
    return dict(type="line", x0=x, x1=x, y0=0, y1=1, xref="x", yref="paper", line=dict(color=colour, dash=dash,
                                                                                          width=width))


def _hline(y: float, colour: str = "#000", dash: str = "dash", width: float = 1.5) -> dict:
    return dict(type="line", x0=0, x1=1, y0=y, y1=y, xref="paper", yref="y", line=dict(color=colour, dash=dash,
                                                                                          width=width))


def query_profile(series: Mapping[str, np.ndarray], tokens: Sequence[str], *, ylabel: str, title: str = "",
                  start: int = 0, marks: Optional[Sequence[int]] = None, template: str = SCREEN,
                  height: int = 280) -> go.Figure:
    """One line per series over query positions start..; hover shows '(i)tok'."""
    traces = []
    for name, y in series.items():
        y = f32(y)
        n = len(y)
        traces.append(dict(type="scatter", x=np.arange(start, start + n), y=y, mode="lines", name=name,
                           customdata=token_labels(tokens, start, start + n),
                           hovertemplate=f"%{{customdata}}<br>{name} = %{{y:.3f}}<extra></extra>"))
    layout = dict(title=dict(text=title), height=height, xaxis=dict(title=dict(text="query position")),
                  yaxis=dict(title=dict(text=ylabel)), hovermode="x unified" if len(series) > 1 else "closest",
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"),
                  shapes=[_vline(i) for i in (marks or ())])
    return make_figure(traces, layout, template)


def received_bars(received: np.ndarray, tokens: Sequence[str], *, sinks: Sequence[int] = (0,),
                  title: str = "", log_y: bool = False, template: str = SCREEN, height: int = 280) -> go.Figure:
    """Mean attention each key receives; sink keys (token 0, hidden sinks) in a separate colour."""
    r = f32(received)
    n = len(r)
    is_sink = np.zeros(n, bool)
    idx = [i for i in sinks if 0 <= i < n]
    is_sink[idx] = True
    labels = token_labels(tokens, 0, n)
    traces = []
    for mask, name, colour in ((~is_sink, "key", BAR_COLOUR), (is_sink, "sink", SINK_COLOUR)):
        x = np.nonzero(mask)[0]
        if x.size == 0:
            continue
        traces.append(dict(type="bar", x=x, y=np.maximum(r[x], 1e-6) if log_y else r[x], name=name,
                           marker=dict(color=colour), customdata=[labels[i] for i in x],
                           hovertemplate="%{customdata}<br>received = %{y:.4f}<extra></extra>"))
    notes = [dict(x=i, y=float(np.log10(max(r[i], 1e-6))) if log_y else float(r[i]), text=labels[i], showarrow=True,
                  arrowhead=0, ay=-22, font=dict(size=11, color=SINK_COLOUR)) for i in idx[:12]]
    layout = dict(title=dict(text=title), height=height, bargap=0.05, xaxis=dict(title=dict(text="key position")),
                  yaxis=dict(title=dict(text="mean attention received"), type="log" if log_y else "linear"),
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"), annotations=notes)
    return make_figure(traces, layout, template)


def layer_curves(curves: Mapping[str, np.ndarray], *, ylabel: str, title: str = "", template: str = SCREEN,
                 height: int = 300, y_range: Optional[tuple[float, float]] = None,
                 hline: Optional[float] = None) -> go.Figure:
    """One line per curve over layers."""
    traces = [dict(type="scatter", x=np.arange(len(y)), y=f32(y), mode="lines+markers", name=name,
                   hovertemplate=f"layer %{{x}}<br>{name} = %{{y:.3f}}<extra></extra>") for name, y in curves.items()]
    layout = dict(title=dict(text=title), height=height, xaxis=dict(title=dict(text="layer"), dtick=2),
                  yaxis=dict(title=dict(text=ylabel), range=list(y_range) if y_range else None),
                  legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), margin=dict(b=90),
                  shapes=[_hline(hline, "#999")] if hline is not None else [])
    return make_figure(traces, layout, template)


def threshold_curve(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, marker: Optional[float] = None,
                    title: str = "", template: str = SCREEN, height: int = 280) -> go.Figure:
    """y(x) for a swept threshold, e.g. sink rate against eps; the current threshold marked."""
    traces = [dict(type="scatter", x=f32(x), y=f32(y), mode="lines", line=dict(shape="hv"),
                   hovertemplate=f"{xlabel} = %{{x:.2f}}<br>{ylabel} = %{{y:.3f}}<extra></extra>")]
    shapes, notes = [], []
    if marker is not None:
        shapes.append(_vline(marker, SINK_COLOUR, "dash", 1.5))
        notes.append(dict(x=marker, y=1, yref="paper", text=f"{xlabel} = {marker:g}", showarrow=False,
                          xanchor="left", yanchor="top", font=dict(color=SINK_COLOUR)))
    layout = dict(title=dict(text=title), height=height, xaxis=dict(title=dict(text=xlabel)),
                  yaxis=dict(title=dict(text=ylabel), range=[0, 1.02]), showlegend=False, shapes=shapes,
                  annotations=notes)
    return make_figure(traces, layout, template)


def basin_curves(per_layer: np.ndarray, *, item_names: Sequence[str], aggregate: Optional[np.ndarray] = None,
                 title: str = "", ylabel: str = "attention mass from the query region",
                 template: str = SCREEN, height: int = 340) -> go.Figure:
    """The U shape: per-item mass [L, n_items] as one thin line per layer (colour = depth) plus the
    aggregate over layers as a thick line."""
    p = np.asarray(per_layer, dtype=float)
    L, n = p.shape
    x = np.arange(n)
    colours = sample_colorscale("Viridis", np.linspace(0, 1, max(L, 2)).tolist())
    traces = [dict(type="scatter", x=x, y=f32(p[layer]), mode="lines", line=dict(width=1, color=colours[layer]),
                   opacity=0.55, name=f"layer {layer}", showlegend=False, customdata=list(item_names),
                   hovertemplate=f"layer {layer}<br>%{{customdata}}<br>mass = %{{y:.4f}}<extra></extra>")
              for layer in range(L)]
    if aggregate is not None:
        traces.append(dict(type="scatter", x=x, y=f32(aggregate), mode="lines+markers",
                           line=dict(width=3.5, color="#000"), name="all layers", customdata=list(item_names),
                           hovertemplate="all layers<br>%{customdata}<br>mass = %{y:.4f}<extra></extra>"))
    layout = dict(title=dict(text=title), height=height, yaxis=dict(title=dict(text=ylabel)),
                  xaxis=dict(title=dict(text="item (in order of appearance)"), tickmode="array",
                             tickvals=x.tolist(), ticktext=list(item_names), tickangle=-25 if n > 4 else 0,
                             range=[-0.3, n - 0.7]),
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return make_figure(traces, layout, template)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str, title: str = "",
                 baseline: Optional[float] = None, baseline_name: str = "softmax", template: str = SCREEN,
                 height: int = 300) -> go.Figure:
    """Bars per group (e.g. variants) for one or more series; an optional baseline line."""
    traces = [dict(type="bar", x=list(groups), y=np.array([np.nan if v is None else float(v) for v in ys]),
                   name=name, marker=dict(color=OKABE_ITO[(i + 4) % len(OKABE_ITO)]),
                   hovertemplate=f"%{{x}}<br>{name} = %{{y:.4f}}<extra></extra>")
              for i, (name, ys) in enumerate(series.items())]
    shapes, notes = [], []
    if baseline is not None:
        shapes.append(_hline(baseline))
        notes.append(dict(x=0, xref="paper", y=baseline, text=f"{baseline_name} {baseline:.3f}", showarrow=False,
                          xanchor="left", yanchor="bottom"))
    layout = dict(title=dict(text=title), height=height, yaxis=dict(title=dict(text=ylabel)), barmode="group",
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), showlegend=len(series) > 1,
                  shapes=shapes, annotations=notes)
    return make_figure(traces, layout, template)
