"""Corpus figures (Dodrio's dataset overview) from compute/corpus_stats.corpus_overview's dict.

corpus_head_grid: per-head mean of a metric as the glyph colour, the head's most frequent role as its
symbol and its role stability as its size (a head that keeps its role on every text is a big glyph);
hover gives the spread (std) and the role stability. corpus_spread_map / role_stability_map: the same
grid as heatmaps. text_distributions: per-text sink rate and entropy, one point per text (customdata =
text id, so a click opens the text).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import OKABE_ITO, SCREEN, SEQUENTIAL, SEQUENTIAL_ALT
from .common import escape_markup, f32, make_figure
from .overview import head_grid, layer_head_map


def escape(text: str) -> str:
    """User text (ids, contexts) as literal plotly text on one line: line breaks made visible, then the
    one escape (common.escape_markup)."""
    return escape_markup(str(text).replace("\r", "").replace("\n", "⏎").replace("\t", "⇥"))


def _grid(overview: dict, key: str, stat: Optional[str] = None) -> np.ndarray:
    rows = overview["metrics"][key][stat] if stat else overview[key]
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def corpus_head_grid(overview: dict, metric: str, *, selected: Optional[tuple[int, int]] = None,
                     template: str = SCREEN, title: str = "") -> go.Figure:
    """Layers x heads glyphs: colour = mean of `metric` over texts, symbol = role_mode, size = role_stability."""
    if metric not in overview["metrics"]:
        raise ValueError(f"no metric {metric!r} in the corpus overview")
    mean = _grid(overview, metric, "mean")
    std = _grid(overview, metric, "std")
    stab = _grid(overview, "role_stability")
    roles = [[r if r is not None else "unknown" for r in row] for row in overview["role_mode"]]
    has_roles = np.isfinite(stab).any()
    return head_grid(mean, metric=f"{metric} (mean)", roles=roles if has_roles else None,
                     importance=np.nan_to_num(stab) if has_roles else None, selected=selected,
                     hover={f"{metric} std": std, "role stability": stab}, template=template,
                     title=title or f"{overview['n_texts']} texts: mean {metric}; size = role stability")


def corpus_spread_map(overview: dict, metric: str, *, selected: Optional[tuple[int, int]] = None,
                      template: str = SCREEN) -> go.Figure:
    """Std over texts of `metric` per head (how text-dependent the head is)."""
    return layer_head_map(_grid(overview, metric, "std"), label=f"{metric} std", selected=selected,
                          template=template, colorscale=SEQUENTIAL_ALT, zmin=0.0,
                          title=f"spread of {metric} over {overview['n_texts']} texts")


def role_stability_map(overview: dict, *, selected: Optional[tuple[int, int]] = None,
                       template: str = SCREEN) -> go.Figure:
    """Share of the texts on which each head has its most frequent role (0..1)."""
    return layer_head_map(_grid(overview, "role_stability"), label="role stability", selected=selected,
                          template=template, colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0,
                          title="role stability (share of texts with the head's most frequent role)")


DISTRIBUTIONS = (("sink_rate", "sink rate (share of heads)"), ("entropy_norm_mean", "mean normalised entropy"),
                 ("entropy_mean", "mean entropy (nats)"))


def text_distributions(overview: dict, *, kinds: Optional[Sequence[str]] = None,
                       which: Sequence[str] = ("sink_rate", "entropy_norm_mean"),
                       template: str = SCREEN) -> go.Figure:
    """One panel per per-text quantity: a box with every text as a point (hover = text id, value;
    customdata = text id). kinds (one per text, e.g. the corpus 'kind' field) colour the points."""
    labels = dict(DISTRIBUTIONS)
    ids = [str(i) for i in overview["ids"]]
    kinds = list(kinds) if kinds is not None else None
    if kinds is not None and len(kinds) != len(ids):
        raise ValueError(f"{len(kinds)} kinds for {len(ids)} texts")
    groups = list(dict.fromkeys(kinds)) if kinds else ["texts"]
    n = len(which)
    gap = 0.08
    width = (1 - gap * (n - 1)) / n
    traces, layout = [], {}
    for c, key in enumerate(which):
        vals = np.array([np.nan if v is None else v for v in overview["per_text"][key]], float)
        ax = "" if c == 0 else str(c + 1)
        x0 = c * (width + gap)
        layout[f"xaxis{ax}"] = dict(domain=[x0, x0 + width], anchor=f"y{ax}", showticklabels=False,
                                    title=dict(text=labels.get(key, key)))
        layout[f"yaxis{ax}"] = dict(anchor=f"x{ax}", zeroline=False)
        for g, grp in enumerate(groups):
            sel = [i for i in range(len(ids)) if (kinds[i] if kinds else "texts") == grp]
            traces.append(dict(
                type="box", y=f32(vals[sel]), x=[grp] * len(sel), name=escape(grp), xaxis=f"x{ax}",
                yaxis=f"y{ax}", boxpoints="all", jitter=0.5, pointpos=0, legendgroup=grp, showlegend=c == 0,
                marker=dict(color=OKABE_ITO[g % len(OKABE_ITO)], size=7), line=dict(width=1),
                customdata=[ids[i] for i in sel], text=[escape(ids[i]) for i in sel],
                hovertemplate="%{text}<br>" + escape(labels.get(key, key)) + " = %{y:.3f}<extra></extra>"))
    layout.update(title=dict(text=f"per-text distributions over {len(ids)} texts"), height=380,
                  boxmode="overlay", clickmode="event", hovermode="closest",
                  legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return make_figure(traces, layout, template)
