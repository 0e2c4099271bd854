"""Figures of one traced token (compute/tracing's trace.json): rollout and flow bars, the layer-by-token
rollout graph, the logit lens, head contributions and the neuron view. Pure: dicts and lists in, figures out.

Rollout and flow are heuristics about how attention mixes tokens, not gradient attributions; the
figures say so in their titles.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import DIVERGING, OKABE_ITO, SCREEN, SEQUENTIAL
from .common import empty_figure, escape_all, escape_markup, f32, make_figure, show_token, token_labels, weight_bins
from .overview import layer_head_map

HEURISTIC = "attention mixing heuristic (Abnar & Zuidema 2020), not a gradient attribution"
MAX_BAR_TOKENS = 512            # bars past this would be sub-pixel: the caller passes a window instead
MAX_GRAPH_TOKENS = 128          # layer-by-token graph columns ((L+1) x tokens nodes)


def token_window(n: int, window: Optional[tuple[int, int]], limit: int, what: str) -> tuple[int, int]:
    """[a, b) of the tokens to draw: all n by default; a window must lie inside and hold at most `limit`."""
    a, b = (0, n) if window is None else (int(window[0]), int(window[1]))
    if not 0 <= a < b <= n:
        raise ValueError(f"window {a}..{b} is not inside the {n} tokens")
    if b - a > limit:
        raise ValueError(f"{what} draws at most {limit} tokens; pass a window of at most {limit}")
    return a, b


def _sub_axes(n_rows: int, gap: float = 0.08) -> list[list[float]]:
    """Vertical domains of n stacked panels, top first."""
    h = (1 - gap * (n_rows - 1)) / n_rows
    return [[max(0.0, round(1 - (r + 1) * h - r * gap, 6)), min(1.0, round(1 - r * (h + gap), 6))]
            for r in range(n_rows)]


def rollout_bars(tokens: Sequence[str], rollout: Sequence[float], flow: Optional[Sequence[float]] = None, *,
                 position: int, flow_note: str = "", log: bool = False, window: Optional[tuple[int, int]] = None,
                 template: str = SCREEN) -> go.Figure:
    """Per-token rollout (top) and flow (bottom) scores for query `position`; flow_note replaces a missing
    flow (e.g. the length limit). log=True: log y axes (rollout of causal models piles onto token 0).
    window (a, b): draw tokens a..b-1 only (needed past MAX_BAR_TOKENS)."""
    a, b = token_window(len(rollout), window, MAX_BAR_TOKENS, "rollout_bars")
    labels = escape_all(token_labels(tokens, a, b))
    rows = [("rollout", f32(rollout)[a:b])] + ([("flow", f32(flow)[a:b])] if flow is not None else [])
    dom = _sub_axes(2)
    traces, layout = [], {}
    for k, (name, v) in enumerate(rows):
        ax = "" if k == 0 else str(k + 1)
        traces.append(dict(type="bar", x=labels, y=v, name=name, marker=dict(color=OKABE_ITO[4 if k == 0 else 5]),
                           xaxis=f"x{ax}", yaxis=f"y{ax}",
                           hovertemplate=f"%{{x}}<br>{name} = %{{y:.4g}}<extra></extra>"))
        layout[f"yaxis{ax}"] = dict(domain=dom[k], title=dict(text=name), type="log" if log else "linear",
                                    anchor=f"x{ax}")
        layout[f"xaxis{ax}"] = dict(type="category", tickangle=-60, anchor=f"y{ax}",
                                    showticklabels=k == len(rows) - 1, **({"matches": "x"} if k else {}))
    if flow is None:
        layout["annotations"] = [dict(text=flow_note or "flow not computed", x=0.5, y=dom[1][1] - 0.15, xref="paper",
                                      yref="paper", showarrow=False, font=dict(size=13, color="#555"))]
        layout["yaxis2"] = dict(domain=dom[1], visible=False)
        layout["xaxis2"] = dict(visible=False, anchor="y2")
    layout.update(title=dict(text=f"what position {position} ({_shown(tokens[position])}) draws on"
                                       f"<br><sup>{HEURISTIC}</sup>"),
                  showlegend=False, height=460, bargap=0.15)
    return make_figure(traces, layout, template)


def layer_token_graph(tokens: Sequence[str], by_layer: np.ndarray, edges: Sequence[Sequence[float]], *,
                      position: int, window: Optional[tuple[int, int]] = None, n_bins: int = 4,
                      template: str = SCREEN, colorscale: str = SEQUENTIAL) -> go.Figure:
    """Layer-by-token rollout graph: node (l, i) coloured and sized by how much of position P's rollout passes
    through it after layer l (by_layer [L+1, n], row 0 = input tokens); edges [l, i, j, w] from (l-1, j) to
    (l, i), drawn in n_bins widths by weight. window (a, b): tokens a..b-1 only (needed past MAX_GRAPH_TOKENS;
    edges leaving the window are not drawn)."""
    a, b = token_window(np.shape(by_layer)[1], window, MAX_GRAPH_TOKENS, "layer_token_graph")
    v = np.asarray(by_layer, dtype=float)[:, a:b]
    L1, n = v.shape
    layer, tok = np.meshgrid(np.arange(L1), np.arange(a, b), indexing="ij")
    traces = []
    e = np.asarray(edges, dtype=float).reshape(-1, 4)
    e = e[(e[:, 1] >= a) & (e[:, 1] < b) & (e[:, 2] >= a) & (e[:, 2] < b)]
    if len(e):
        bins = weight_bins(e[:, 3], n_bins)
        for k in range(n_bins):
            sel = e[bins == k]
            if not len(sel):
                continue
            xs = np.stack([sel[:, 2], sel[:, 1], np.full(len(sel), np.nan)], 1).ravel()
            ys = np.stack([sel[:, 0] - 1, sel[:, 0], np.full(len(sel), np.nan)], 1).ravel()
            traces.append(dict(type="scatter", x=f32(xs), y=f32(ys), mode="lines", hoverinfo="skip", showlegend=False,
                               line=dict(width=0.6 + 1.2 * k, color=f"rgba(0,114,178,{0.25 + 0.2 * k:.2f})")))
    vmax = max(float(v.max()), 1e-12)
    sizes = 4 + 14 * np.sqrt(v / vmax)
    names = [_shown(t) for t in tokens[a:b]]
    custom = [[int(l), int(i), names[i - a], float(c)] for l, i, c in zip(layer.ravel(), tok.ravel(), v.ravel())]
    traces.append(dict(type="scatter", x=tok.ravel(), y=layer.ravel(), mode="markers", customdata=custom,
                       showlegend=False,
                       marker=dict(size=f32(sizes.ravel()), color=f32(np.log10(np.maximum(v.ravel(), 1e-6))),
                                   colorscale=colorscale, cmin=-6, cmax=0, line=dict(width=0.4, color="#333"),
                                   colorbar=dict(title=dict(text="share (log)", side="right"), tickvals=[-6, -4, -2, 0],
                                                 ticktext=["1e-6", "1e-4", "0.01", "1"])),
                       hovertemplate="after layer %{customdata[0]} · (%{customdata[1]})%{customdata[2]}"
                                     "<br>share of the rollout = %{customdata[3]:.4g}<extra></extra>"))
    layout = dict(title=dict(text=f"rollout of position {position} through the layers<br><sup>{HEURISTIC}</sup>"),
                  xaxis=dict(tickmode="array", tickvals=list(range(a, b)), ticktext=escape_all(token_labels(tokens, a, b)),
                             tickangle=-60, showgrid=False, zeroline=False, range=[a - 0.6, b - 0.4]),
                  yaxis=dict(title=dict(text="layer (0 = input tokens)"), showgrid=False, zeroline=False,
                             range=[-0.6, L1 - 0.4], dtick=1 if L1 <= 16 else 2),
                  height=int(min(1100, max(380, 120 + 22 * L1))), hovermode="closest")
    return make_figure(traces, layout, template)


def _shown(tok: str) -> str:
    """A token as figure text: readable (show_token) and escaped for plotly's markup (escape_markup)."""
    return escape_markup(show_token(tok))


def lens_token(tok: str) -> str:
    """_shown, with spaces made visible (a lens often predicts a bare space)."""
    return _shown(tok.replace(" ", "␣") if not tok.strip(" ") or tok.startswith("  ") else tok)


def logit_lens_figure(records: Sequence[dict], *, next_token: Optional[str] = None, template: str = SCREEN,
                      colorscale: str = SEQUENTIAL) -> go.Figure:
    """Logit lens: rows = layers (0 at the top), columns = rank 1..k, cell = the k-th best token after that layer
    (its text in the cell, probability as colour); right panel: rank of the actual next token per layer."""
    if not records:
        return empty_figure("no logit lens (the model has no unembedding)", template)
    L = len(records)
    k = min(len(r["top"]) for r in records)
    prob = np.array([[t["prob"] for t in r["top"][:k]] for r in records], dtype=np.float32)
    text = [[lens_token(t["token"]) for t in r["top"][:k]] for r in records]
    has_rank = next_token is not None and all("next_token_rank" in r for r in records)
    right = 0.78 if has_rank else 1.0
    traces = [dict(type="heatmap", z=prob, x=np.arange(1, k + 1), y=np.arange(L), text=text, texttemplate="%{text}",
                   textfont=dict(size=11), zmin=0, zmax=1, colorscale=colorscale, xaxis="x", yaxis="y",
                   colorbar=dict(title=dict(text="prob", side="right"), x=right + 0.005 if has_rank else 1.02),
                   hovertemplate="after layer %{y}<br>rank %{x}: %{text}<br>p = %{z:.4f}<extra></extra>")]
    layout = dict(title=dict(text="logit lens: the model's best guesses after each layer"),
                  xaxis=dict(domain=[0, right - 0.08 if has_rank else 1], title=dict(text="rank"), dtick=1),
                  yaxis=dict(title=dict(text="layer"), autorange="reversed", dtick=1 if L <= 32 else 2),
                  height=int(min(1100, max(360, 110 + 24 * L))))
    if has_rank:
        rank = np.array([r["next_token_rank"] for r in records], dtype=float)
        p = np.array([r["next_token_prob"] for r in records], dtype=float)
        traces.append(dict(type="scatter", x=f32(rank), y=np.arange(L), mode="lines+markers", xaxis="x2", yaxis="y",
                           customdata=f32(p), marker=dict(color=OKABE_ITO[5]), showlegend=False,
                           hovertemplate="after layer %{y}<br>rank %{x}<br>p = %{customdata:.4g}<extra></extra>"))
        layout["xaxis2"] = dict(domain=[right + 0.09, 1], type="log", anchor="y",
                                title=dict(text=f"rank of {_shown(next_token)}"))
    return make_figure(traces, layout, template)


def contributions_map(contributions: Sequence[Sequence[float]], *, rest: float, target: str, logit: float,
                      selected: Optional[tuple[int, int]] = None, template: str = SCREEN) -> go.Figure:
    """Each head's direct contribution to the target token's logit, diverging around 0 (layers x heads)."""
    c = np.asarray(contributions, dtype=float)
    lim = float(np.abs(c).max()) or 1.0
    return layer_head_map(c, label="logit contribution", selected=selected, template=template, colorscale=DIVERGING,
                          zmin=-lim, zmax=lim, zmid=0.0,
                          title=f"direct contribution of each head to the logit of {show_token(target)} "
                                f"({logit:.2f} = heads {c.sum():.2f} + rest {rest:.2f})")


def neuron_bars(nv: dict, *, template: str = SCREEN) -> go.Figure:
    """Neuron view of one (query, key) pair of one head: q, k and q*k per dimension after the model's position
    encoding (right) and before it (left, when the model separates them)."""
    cols = [("after RoPE", "q", "k", "product", "dot")]
    if "q_pre" in nv:
        cols.insert(0, ("before RoPE", "q_pre", "k_pre", "product_pre", "dot_pre"))
    dom_y = _sub_axes(3, 0.07)
    w = 1.0 / len(cols)
    traces, layout, n = [], {}, 0
    for c, (name, qk, kk, pk, dot) in enumerate(cols):
        for r, (key, label, colour) in enumerate(((qk, "q", OKABE_ITO[4]), (kk, "k", OKABE_ITO[0]),
                                                  (pk, "q·k per dim", OKABE_ITO[5]))):
            n += 1
            ax = "" if n == 1 else str(n)
            v = f32(nv[key])
            traces.append(dict(type="bar", x=np.arange(len(v)), y=v, xaxis=f"x{ax}", yaxis=f"y{ax}", showlegend=False,
                               marker=dict(color=colour),
                               hovertemplate=f"dim %{{x}}<br>{label} = %{{y:.4g}}<extra></extra>"))
            layout[f"xaxis{ax}"] = dict(domain=[c * w + 0.04, (c + 1) * w - 0.02], anchor=f"y{ax}",
                                        showticklabels=r == 2, title=dict(text="dimension" if r == 2 else ""))
            layout[f"yaxis{ax}"] = dict(domain=dom_y[r], anchor=f"x{ax}", title=dict(text=label if c == 0 else ""))
        layout.setdefault("annotations", []).append(dict(
            text=f"<b>{name}</b>: Σ = {nv[dot]:.3f}",
            x=(c + 0.5) * w, y=1.05, xref="paper", yref="paper", showarrow=False, xanchor="center"))
    layout.update(title=dict(text=f"layer {nv['layer']} head {nv['head']} (key head {nv['kv_head']}): "
                                  f"query {nv['query']} → key {nv['key']}<br><sup>logit = Σ(q·k after RoPE) × "
                                  f"{nv['scale']:.3g} = {nv['logit']:.3f}; softmax over the row → a = "
                                  f"{nv['prob']:.4g}"
                                  "</sup>"),
                  height=580, bargap=0.1, margin=dict(t=100))
    return make_figure(traces, layout, template)
