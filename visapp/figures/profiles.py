"""Line and bar charts: per-query and per-key profiles, per-layer curves, basin U-shapes, bars."""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ..templates import OKABE_ITO, SCREEN
from .common import escape_all, escape_markup, f32, make_figure, token_labels

SINK_COLOUR = "#D55E00"
BAR_COLOUR = "#0072B2"
RECEIVED_SCALES = ("auto", "linear", "log", "clip")
SINK_DOMINANCE = 3.0        # auto: clip the axis when a sink receives more than this x the top other key
CLIP_HEADROOM = 1.15


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
        name = escape_markup(name)
        traces.append(dict(type="scatter", x=np.arange(start, start + n), y=y, mode="lines", name=name,
                           customdata=escape_all(token_labels(tokens, start, start + n)),
                           hovertemplate=f"%{{customdata}}<br>{name} = %{{y:.3f}}<extra></extra>"))
    layout = dict(title=dict(text=escape_markup(title)), height=height, xaxis=dict(title=dict(text="query position")),
                  yaxis=dict(title=dict(text=ylabel)), hovermode="x unified" if len(series) > 1 else "closest",
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"),
                  shapes=[_vline(i) for i in (marks or ())])
    return make_figure(traces, layout, template)


def received_scale(r: np.ndarray, is_sink: np.ndarray, scale: str = "auto") -> str:
    """'auto' -> 'clip' when a sink key receives more than SINK_DOMINANCE x the top other key (a linear
    axis would show only the sink bar), else 'linear'."""
    if scale not in RECEIVED_SCALES:
        raise ValueError(f"scale must be one of {', '.join(RECEIVED_SCALES)}")
    if scale != "auto":
        return scale
    rest = r[~is_sink]
    top_rest = float(np.nanmax(rest)) if rest.size and np.isfinite(rest).any() else 0.0
    top_sink = float(np.nanmax(r[is_sink])) if is_sink.any() else 0.0
    return "clip" if top_rest > 0 and top_sink > SINK_DOMINANCE * top_rest else "linear"


def received_bars(received: np.ndarray, tokens: Sequence[str], *, sinks: Sequence[int] = (0,),
                  title: str = "", log_y: bool = False, scale: str = "auto", template: str = SCREEN,
                  height: int = 280) -> go.Figure:
    """Mean attention each key receives; sink keys (token 0, hidden sinks) in a separate colour.

    Sink-aware axis: 'clip' (what 'auto' picks when a sink dominates) scales the axis to the other keys
    and marks each clipped sink bar with its value; 'log' is a log axis; log_y=True means 'log'."""
    r = f32(received)
    n = len(r)
    is_sink = np.zeros(n, bool)
    idx = [i for i in sinks if 0 <= i < n]
    is_sink[idx] = True
    mode = received_scale(r, is_sink, "log" if log_y else scale)
    log_y = mode == "log"
    labels = escape_all(token_labels(tokens, 0, n))
    top = None
    if mode == "clip":
        top = CLIP_HEADROOM * float(np.nanmax(r[~is_sink]))
    traces = []
    for mask, name, colour in ((~is_sink, "key", BAR_COLOUR), (is_sink, "sink", SINK_COLOUR)):
        x = np.nonzero(mask)[0]
        if x.size == 0:
            continue
        traces.append(dict(type="bar", x=x, y=np.maximum(r[x], 1e-6) if log_y else r[x], name=name,
                           marker=dict(color=colour), customdata=[labels[i] for i in x],
                           hovertemplate="%{customdata}<br>received = %{y:.4f}<extra></extra>"))
    notes = []
    for i in idx[:12]:
        v = float(r[i])
        font = dict(size=11, color=SINK_COLOUR)
        if top is not None and v > top:       # the bar runs past the axis: its value, inside the plot
            notes.append(dict(x=i, y=top, text=f"{labels[i]} {v:.3g} ↑", showarrow=False, xanchor="left",
                              yanchor="top", xshift=4, font=font))
            continue
        y = float(np.log10(max(v, 1e-6))) if log_y else v
        notes.append(dict(x=i, y=y, text=labels[i], showarrow=True, arrowhead=0, ax=12, ay=-22, xanchor="left",
                          font=font))
    yaxis = dict(title=dict(text="mean attention received"), type="log" if log_y else "linear")
    if top is not None:
        yaxis.update(range=[0, top])         # the sink notes carry their values and an arrow
    layout = dict(title=dict(text=escape_markup(title)), height=height, bargap=0.05,
                  xaxis=dict(title=dict(text="key position"), range=[-0.5 - 0.01 * n, n - 0.5]), yaxis=yaxis,
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"), annotations=notes)
    return make_figure(traces, layout, template)


def layer_curves(curves: Mapping[str, np.ndarray], *, ylabel: str, title: str = "", template: str = SCREEN,
                 height: int = 300, y_range: Optional[tuple[float, float]] = None,
                 hline: Optional[float] = None) -> go.Figure:
    """One line per curve over layers (axis from layer 0: no padding to negative layers)."""
    n_layers = max((len(y) for y in curves.values()), default=1)
    traces = []
    for name, y in curves.items():
        name = escape_markup(name)
        traces.append(dict(type="scatter", x=np.arange(len(y)), y=f32(y), mode="lines+markers", name=name,
                           hovertemplate=f"layer %{{x}}<br>{name} = %{{y:.3f}}<extra></extra>"))
    layout = dict(title=dict(text=escape_markup(title)), height=height,
                  xaxis=dict(title=dict(text="layer"), range=[-0.5, n_layers - 0.5], tick0=0,
                             dtick=1 if n_layers <= 16 else 2),
                  yaxis=dict(title=dict(text=escape_markup(ylabel)), range=list(y_range) if y_range else None),
                  legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), margin=dict(b=90),
                  shapes=[_hline(hline, "#999")] if hline is not None else [])
    return make_figure(traces, layout, template)


def threshold_curve(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, marker: Optional[float] = None,
                    title: str = "", template: str = SCREEN, height: int = 280) -> go.Figure:
    """y(x) for a swept threshold, e.g. sink rate against eps; the current threshold marked."""
    xlabel, ylabel = escape_markup(xlabel), escape_markup(ylabel)
    traces = [dict(type="scatter", x=f32(x), y=f32(y), mode="lines", line=dict(shape="hv"),
                   hovertemplate=f"{xlabel} = %{{x:.2f}}<br>{ylabel} = %{{y:.3f}}<extra></extra>")]
    shapes, notes = [], []
    if marker is not None:
        shapes.append(_vline(marker, SINK_COLOUR, "dash", 1.5))
        notes.append(dict(x=marker, y=1, yref="paper", text=f"{xlabel} = {marker:g}", showarrow=False,
                          xanchor="left", yanchor="top", font=dict(color=SINK_COLOUR)))
    layout = dict(title=dict(text=escape_markup(title)), height=height, xaxis=dict(title=dict(text=xlabel)),
                  yaxis=dict(title=dict(text=ylabel), range=[0, 1.02]), showlegend=False, shapes=shapes,
                  annotations=notes)
    return make_figure(traces, layout, template)


# 'Document [3] ...', 'Document 3', 'Passage 3', '[3]', 'Example 3:' at the start of an item's label
_ITEM_MARKER = re.compile(r"^\s*(?:(document|doc|passage|example|item|block)\s*)?\[?\s*(\d+)\s*\]?\s*[:.)]?\s*",
                          re.IGNORECASE)
ITEM_NAME_CHARS = 10


def item_name(index: int, label: str) -> str:
    """A short, clean axis name for a basin item: its own marker ('Document [3] The ...' -> 'Document 3',
    '[2] ...' -> 'item 2', 'block 1' stays), else 'item k: first words'. Plain text (figures escape)."""
    label = " ".join(str(label or "").split())
    m = _ITEM_MARKER.match(label)
    if m and (m.group(1) or "[" in m.group(0)):
        word = (m.group(1) or "item").capitalize() if m.group(1) else "item"
        return f"{word} {m.group(2)}"
    rest = label if len(label) <= ITEM_NAME_CHARS else label[:ITEM_NAME_CHARS - 1].rstrip() + "…"
    return f"item {index}: {rest}" if rest else f"item {index}"


def basin_item_names(items: Sequence[dict]) -> list[str]:
    """item_name of each basin item dict ({'index', 'label'}), made unique ('(2)' suffix on repeats)."""
    names, seen = [], {}
    for k, it in enumerate(items):
        nm = item_name(int(it.get("index", k)), it.get("label", ""))
        seen[nm] = seen.get(nm, 0) + 1
        names.append(nm if seen[nm] == 1 else f"{nm} ({seen[nm]})")
    return names


def basin_curves(per_layer: np.ndarray, *, item_names: Optional[Sequence[str]] = None,
                 items: Optional[Sequence[dict]] = None, aggregate: Optional[np.ndarray] = None,
                 title: str = "", ylabel: str = "mass from the query region",
                 template: str = SCREEN, height: int = 340) -> go.Figure:
    """The U shape: per-item mass [L, n_items] as one thin line per layer (colour = depth) plus the
    aggregate over layers as a thick line. Items are named by `items` (the basin section's item dicts:
    clean names on the axis, the full label in the hover) or by `item_names` as given."""
    p = np.asarray(per_layer, dtype=float)
    L, n = p.shape
    x = np.arange(n)
    if items is not None:
        names = basin_item_names(items)
        full = [" ".join(str(it.get("label", "")).split()) for it in items]
    else:
        names = [str(v) for v in (item_names if item_names is not None else [f"item {k}" for k in range(n)])]
        full = names
    if len(names) != n:
        raise ValueError(f"{len(names)} item names for {n} items")
    ticks = escape_all(names)
    hover = [escape_markup(f"{a}: {b}" if b and b != a else a) for a, b in zip(names, full)]
    colours = sample_colorscale("Viridis", np.linspace(0, 1, max(L, 2)).tolist())
    traces = [dict(type="scatter", x=x, y=f32(p[layer]), mode="lines", line=dict(width=1, color=colours[layer]),
                   opacity=0.55, name=f"layer {layer}", showlegend=False, customdata=hover,
                   hovertemplate=f"layer {layer}<br>%{{customdata}}<br>mass = %{{y:.4f}}<extra></extra>")
              for layer in range(L)]
    if aggregate is not None:
        traces.append(dict(type="scatter", x=x, y=f32(aggregate), mode="lines+markers",
                           line=dict(width=3.5, color="#000"), name="all layers", customdata=hover,
                           hovertemplate="all layers<br>%{customdata}<br>mass = %{y:.4f}<extra></extra>"))
    # horizontal labels while they fit; slanted ones hang left of their tick and need the half-item margin
    widest = max((len(t) for t in names), default=0)
    angle = 0 if n * widest <= 70 else -45
    layout = dict(title=dict(text=escape_markup(title)), height=height,
                  yaxis=dict(title=dict(text=escape_markup(ylabel))),
                  xaxis=dict(title=dict(text="item (in order of appearance)"), tickmode="array",
                             tickvals=x.tolist(), ticktext=ticks, tickangle=angle, range=[-0.5, n - 0.5],
                             ticklabeloverflow="allow", automargin=True),
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return make_figure(traces, layout, template)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str, title: str = "",
                 baseline: Optional[float] = None, baseline_name: str = "softmax", template: str = SCREEN,
                 height: int = 300) -> go.Figure:
    """Bars per group (e.g. variants) for one or more series; an optional baseline as a dashed line
    named in the legend (a label on the plot would sit on the bars)."""
    groups = escape_all(groups)
    traces = []
    for i, (name, ys) in enumerate(series.items()):
        name = escape_markup(name)
        traces.append(dict(type="bar", x=list(groups), y=np.array([np.nan if v is None else float(v) for v in ys]),
                           name=name, marker=dict(color=OKABE_ITO[(i + 4) % len(OKABE_ITO)]),
                           hovertemplate=f"%{{x}}<br>{name} = %{{y:.4f}}<extra></extra>"))
    shapes = []
    if baseline is not None:
        shapes.append(_hline(baseline))
        traces.append(baseline_legend(baseline, baseline_name))
    layout = dict(title=dict(text=escape_markup(title)), height=height,
                  yaxis=dict(title=dict(text=escape_markup(ylabel))), barmode="group", shapes=shapes,
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
                  showlegend=len(series) > 1 or baseline is not None)
    return make_figure(traces, layout, template)


def baseline_legend(value: float, name: str = "softmax") -> dict:
    """Legend entry ('softmax 2.345', dashed) for a baseline drawn as a layout line: the legend names it,
    so no label sits on the bars."""
    return dict(type="scatter", x=[None], y=[None], mode="lines", name=escape_markup(f"{name} {value:.3f}"),
                hoverinfo="skip", line=dict(color="#000", dash="dash", width=1.5))
