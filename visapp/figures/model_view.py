"""Model view (BertViz): every layer x head attention map as a small multiple, one click to the head.

All panels are tiled into ONE heatmap (NaN gutters between them), which plotly draws as a single image:
270 heatmap traces on 270 axes would take seconds to build and to lay out. A panel shows the full map when
the text has at most `max_cells` tokens, else the pooled block means merged down to at most `max_cells`
blocks per side (exact block means: merged blocks are weighted by how many cells they hold). Colour is
log10(a) (sink-aware: token 0 often holds most of the mass). Cells carry no hover; a transparent marker
at each panel's centre carries customdata [layer, head] for hover and click (hoverdistance = half a panel,
so a click anywhere on a panel picks its head).

Render budget: z holds at most L*H*(max_cells+1)^2 cells (30 x 9 heads at 32 cells: 294k, about 1.2 MB of
float32), built in well under 1.5 s of server time; tests assert the cell bound, not a timing.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go

from ..templates import SCREEN, SEQUENTIAL
from .common import f32, make_figure
from .heatmap import LOG_FLOOR, log_colorbar, log_values

MAX_PANEL_CELLS = 32
PANEL_PX = 64


def merge_blocks(pooled: np.ndarray, sizes: np.ndarray, max_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., M, M] block means with block sizes [M] -> block means of groups of g = ceil(M / max_cells)
    consecutive blocks, weighted by cell counts (exact), and the merged sizes."""
    m = pooled.shape[-1]
    g = max(1, -(-m // max_cells))
    if g == 1:
        return pooled, sizes
    k = -(-m // g)
    pad = k * g - m
    s = np.concatenate([sizes, np.zeros(pad)]).astype(np.float64)
    z = np.pad(np.nan_to_num(np.asarray(pooled, np.float64)), [(0, 0)] * (pooled.ndim - 2) + [(0, pad), (0, pad)])
    w = s[:, None] * s[None, :]
    num = (z * w).reshape(*z.shape[:-2], k, g, k, g).sum((-3, -1))
    den = w.reshape(k, g, k, g).sum((1, 3))
    merged_sizes = s.reshape(k, g).sum(1)
    return num / den, merged_sizes


def panel_maps(*, maps: Optional[np.ndarray] = None, pooled: Optional[np.ndarray] = None, pool: int = 1,
               n_tokens: int = 0, causal: bool = True,
               max_cells: int = MAX_PANEL_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """[L, H, m, m] panels (m <= max_cells) and the [m + 1] token boundaries of their cells. Full maps
    when given and small enough, else pooled block means merged. Causal: cells wholly above the diagonal NaN."""
    if maps is not None and maps.shape[-1] <= max_cells:
        z = f32(maps)
        n = z.shape[-1]
        edges = np.arange(n + 1)
    else:
        if pooled is None:
            raise ValueError("model_view needs full maps of at most max_cells tokens, or pooled maps")
        m = pooled.shape[-1]
        starts = np.arange(m) * pool
        sizes = np.minimum(starts + pool, n_tokens) - starts
        z, merged = merge_blocks(pooled, sizes, max_cells)
        z = f32(z)
        edges = np.concatenate([[0], np.cumsum(merged)]).astype(int)
    if causal:
        lo, hi = edges[:-1], edges[1:]
        z = z.copy()
        z[..., lo[None, :] > (hi[:, None] - 1)] = np.nan        # key block starts after the query block ends
    return z, edges


def model_view(*, maps: Optional[np.ndarray] = None, pooled: Optional[np.ndarray] = None, pool: int = 1,
               n_tokens: int = 0, causal: bool = True, selected: Optional[tuple[int, int]] = None,
               max_cells: int = MAX_PANEL_CELLS, floor: float = LOG_FLOOR, template: str = SCREEN,
               colorscale: str = SEQUENTIAL, title: str = "") -> go.Figure:
    """All heads' maps (rows = layers, top = layer 0; columns = heads); maps [L,H,N,N] or pooled [L,H,M,M]."""
    z, edges = panel_maps(maps=maps, pooled=pooled, pool=pool, n_tokens=n_tokens, causal=causal, max_cells=max_cells)
    L, H, m, _ = z.shape
    step = m + 1                                           # one NaN gutter row/column per panel
    tiled = np.full((L * step, H * step), np.nan, np.float32)
    for l in range(L):
        for h in range(H):
            tiled[l * step:l * step + m, h * step:h * step + m] = z[l, h]
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    centre = (m - 1) / 2.0
    traces = [dict(type="heatmap", z=log_values(tiled, floor), zmin=float(np.log10(floor)), zmax=0, zsmooth=False,
                   colorscale=colorscale, hoverinfo="skip", colorbar=log_colorbar(floor)),
              dict(type="scatter", x=f32(head.ravel() * step + centre), y=f32(layer.ravel() * step + centre),
                   mode="markers", customdata=np.stack([layer.ravel(), head.ravel()], 1).tolist(),
                   marker=dict(size=PANEL_PX * 0.8, symbol="square", opacity=0), showlegend=False,
                   hovertemplate="layer %{customdata[0]} head %{customdata[1]}<br>click to open the head"
                                 "<extra></extra>")]
    shapes = []
    if selected is not None and 0 <= selected[0] < L and 0 <= selected[1] < H:
        sl, sh = selected
        shapes.append(dict(type="rect", x0=sh * step - 0.7, x1=sh * step + m - 0.3, y0=sl * step - 0.7,
                           y1=sl * step + m - 0.3, line=dict(color="#d00", width=2)))
    cell = "token" if edges[-1] == len(edges) - 1 else f"block of ~{int(np.ceil(edges[-1] / m))} tokens"
    axis = dict(showgrid=False, zeroline=False, ticks="", fixedrange=True)    # a grid to click, not to zoom
    layout = dict(
        title=dict(text=title or f"every head's attention (columns: heads; log scale; one cell = one {cell})",
                   y=0.995, yanchor="top"),
        shapes=shapes, hovermode="closest", hoverdistance=PANEL_PX // 2,
        xaxis=dict(axis, tickmode="array", tickvals=f32(np.arange(H) * step + centre),
                   ticktext=[str(h) for h in range(H)], title=dict(text=""), side="top",
                   range=[-0.5, H * step - 1.5], constrain="domain"),
        yaxis=dict(axis, tickmode="array", tickvals=f32(np.arange(L) * step + centre),
                   ticktext=[str(l) for l in range(L)], title=dict(text="layer"),
                   range=[L * step - 1.5, -0.5], scaleanchor="x"),
        width=int(80 + PANEL_PX * H + 90), height=int(80 + PANEL_PX * L), margin=dict(l=50, r=10, t=70, b=10))
    return make_figure(traces, layout, template)
