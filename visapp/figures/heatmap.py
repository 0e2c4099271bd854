"""Attention heatmaps: full maps with '(i)tok' labels, pooled maps of long inputs, zoom windows.

Rows are queries (top to bottom), columns keys. Causal cells above the diagonal are NaN (blank), not
zero. Sink-aware scales, since most mass often sits on token 0:
  'log'    colour = log10(a) clipped at `floor`; hover shows a itself
  'linear' colour = a, range 0..max
  'split'  key 0 drawn as its own column with its own colour range, keys >= 1 scaled to their own max
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import SCREEN, SEQUENTIAL
from .common import escape_all, escape_markup, f32, make_figure

SCALES = ("log", "linear", "split")
LOG_FLOOR = 1e-4
# Colour bars stop short of the plot's top and bottom edges: a tick label at the very end (the '1' of the
# log bar) would stick out of a tight (paper) figure, and plotly hides labels that pass the figure's edge.
COLORBAR_LEN = 0.92
# Position axes get this share of the range as room above the first token, so the '0' tick label fits.
EDGE_PAD = 0.035


def causal_blank(z: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray) -> np.ndarray:
    """z with NaN where key position > query position (cells a causal model never computes)."""
    out = f32(z).copy()
    out[k_pos[None, :] > q_pos[:, None]] = np.nan
    return out


def log_values(z: np.ndarray, floor: float = LOG_FLOOR) -> np.ndarray:
    """log10(a) clipped at floor; NaN stays NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log10(np.maximum(z, floor)).astype(np.float32)
    out[np.isnan(z)] = np.nan
    return out


def log_colorbar(floor: float = LOG_FLOOR, **kw) -> dict:
    lo = int(np.floor(np.log10(floor)))
    vals = list(range(lo, 1))
    return colorbar("a (log)", tickvals=vals, ticktext=[f"1e{v}" if v < -2 else f"{10.0 ** v:g}" for v in vals],
                    **kw)


def colorbar(title: str, **kw) -> dict:
    """A colour bar a little shorter than the plot (COLORBAR_LEN) so its end tick labels stay visible."""
    return dict(dict(title=dict(text=title, side="right"), len=COLORBAR_LEN, lenmode="fraction", y=0.5,
                     yanchor="middle"), **kw)


def position_range(n_tokens: int, reversed_: bool = False) -> list[float]:
    """Axis range over token positions 0..n-1 with EDGE_PAD room before 0, so the label of tick 0 fits
    at the top of a query axis (plotly drops a tick label that would cross the figure's edge)."""
    lo, hi = -0.5 - EDGE_PAD * n_tokens, n_tokens - 0.5
    return [hi, lo] if reversed_ else [lo, hi]


def _height(n_rows: int, height: Optional[int]) -> int:
    return height or int(min(720, max(320, 60 + 9 * n_rows)))


def _finite_max(z: np.ndarray, q: Optional[float] = None) -> float:
    f = z[np.isfinite(z)]
    if not f.size:
        return 1.0
    return float(np.quantile(f, q) if q is not None else f.max()) or 1e-6


def attention_heatmap(z: np.ndarray, q_labels: Sequence[str], k_labels: Sequence[str], *,
                      causal: bool = True, scale: str = "log", q_start: int = 0, k_start: int = 0,
                      title: str = "", template: str = SCREEN, colorscale: str = SEQUENTIAL,
                      floor: float = LOG_FLOOR, height: Optional[int] = None) -> go.Figure:
    """Heatmap of attention weights z [nq, nk] (rows q_start.., columns k_start..).

    Labels are categories ('(i)tok', unique), so hover shows which tokens a cell links.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}")
    z = f32(z)
    nq, nk = z.shape
    if len(q_labels) != nq or len(k_labels) != nk:
        raise ValueError("labels do not match the map's shape")
    if causal:
        z = causal_blank(z, np.arange(q_start, q_start + nq), np.arange(k_start, k_start + nk))
    q_labels, k_labels, title = escape_all(q_labels), escape_all(k_labels), escape_markup(title)
    base = dict(type="heatmap", y=list(q_labels), hoverongaps=False, zsmooth=False, colorscale=colorscale)
    axes = dict(yaxis=dict(autorange="reversed", type="category", title=dict(text="query")),
                xaxis=dict(type="category", tickangle=-60, title=dict(text="key")))
    layout = dict(title=dict(text=title), height=_height(nq, height), **axes)
    if scale == "split" and k_start == 0 and nk > 1:
        # key 0 in a narrow panel of its own (0..1); keys >= 1 on their own range
        rest = z[:, 1:]
        traces = [dict(base, x=list(k_labels[:1]), z=z[:, :1], zmin=0, zmax=1, xaxis="x", yaxis="y",
                       showscale=False, hovertemplate="query %{y}<br>key %{x}<br>a = %{z:.4g}<extra></extra>"),
                  dict(base, x=list(k_labels[1:]), z=rest, zmin=0, zmax=_finite_max(rest, 0.995), xaxis="x2",
                       yaxis="y", hovertemplate="query %{y}<br>key %{x}<br>a = %{z:.4g}<extra></extra>",
                       colorbar=colorbar("a (keys ≥ 1)"))]
        layout.update(xaxis=dict(axes["xaxis"], domain=[0, 0.05], title=dict(text="key 0<br>(0–1)")),
                      xaxis2=dict(axes["xaxis"], domain=[0.065, 1]))
        return make_figure(traces, layout, template)
    if scale == "log":
        trace = dict(base, x=list(k_labels), z=log_values(z, floor), customdata=z, zmin=float(np.log10(floor)),
                     zmax=0, colorbar=log_colorbar(floor),
                     hovertemplate="query %{y}<br>key %{x}<br>a = %{customdata:.4g}<extra></extra>")
    else:
        trace = dict(base, x=list(k_labels), z=z, zmin=0, zmax=_finite_max(z),
                     colorbar=colorbar("a"),
                     hovertemplate="query %{y}<br>key %{x}<br>a = %{z:.4g}<extra></extra>")
    return make_figure([trace], layout, template)


def block_ranges(n_tokens: int, pool: int) -> np.ndarray:
    """[M, 2] token range [start, end) of each pooled block."""
    starts = np.arange(0, n_tokens, pool)
    return np.stack([starts, np.minimum(starts + pool, n_tokens)], 1)


def pooled_heatmap(pooled: np.ndarray, pool: int, n_tokens: int, *, causal: bool = True, scale: str = "log",
                   stat: str = "max", title: str = "", template: str = SCREEN, colorscale: str = SEQUENTIAL,
                   floor: float = LOG_FLOOR, height: Optional[int] = None) -> go.Figure:
    """Block-pooled map [M, M] of a long input on token axes (block b covers tokens b*pool..).

    Blocks entirely above the diagonal are blank for causal models. Click a block to zoom (the
    callback reads the clicked x/y, which are token positions).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}")
    z = f32(pooled)
    title = escape_markup(title)
    m = z.shape[0]
    rng = block_ranges(n_tokens, pool)[:m]
    centres = (rng[:, 0] + rng[:, 1] - 1) / 2.0
    if causal:
        z = z.copy()
        z[rng[None, :, 0] > (rng[:, None, 1] - 1)] = np.nan
    hover = (f"queries around %{{y:.0f}}<br>keys around %{{x:.0f}}<br>{stat} a over a {pool}×{pool} block"
             " = %{VALUE:.4g}<br>click to zoom<extra></extra>")
    trace = dict(type="heatmap", x=centres, y=centres, hoverongaps=False, zsmooth=False, colorscale=colorscale)
    if scale == "log":
        trace.update(z=log_values(z, floor), customdata=z, zmin=float(np.log10(floor)), zmax=0,
                     colorbar=log_colorbar(floor), hovertemplate=hover.replace("VALUE", "customdata"))
    else:
        top = _finite_max(z[:, 1:]) if scale == "split" and m > 1 else _finite_max(z)
        trace.update(z=z, zmin=0, zmax=top, colorbar=colorbar(f"{stat} a"),
                     hovertemplate=hover.replace("VALUE", "z"))
    layout = dict(title=dict(text=title), height=height or 560,
                  yaxis=dict(range=position_range(n_tokens, reversed_=True), title=dict(text="query position")),
                  xaxis=dict(range=[-0.5, n_tokens - 0.5], title=dict(text="key position")))
    return make_figure([trace], layout, template)


def zoom_window(center_q: int, center_k: int, n_tokens: int, span: int, causal: bool) -> tuple[int, int, int, int]:
    """(q0, q1, k0, k1) of a span x span window around a clicked point, clamped to the text; for
    causal models keys never start after the queries' end."""
    span = max(1, min(span, n_tokens))
    q0 = int(np.clip(center_q - span // 2, 0, n_tokens - span))
    k0 = int(np.clip(center_k - span // 2, 0, n_tokens - span))
    if causal:
        k0 = min(k0, q0)
    return q0, q0 + span, k0, k0 + span
