"""Generated tokens: each one's probability under the model, with the top-k alternatives in the hover.

Takes compute.generate's step records ({"token", "prob", "top": [{"token", "prob"}]}) as plain dicts, so
the app and the export draw the same figure without torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..templates import SCREEN
from .common import escape_markup, f32, make_figure, show_token, token_label

BAR_COLOUR = "#0072B2"
ALT_COLOUR = "#E69F00"


def generation_probabilities(steps: Sequence[dict], *, start: int = 0, title: str = "", template: str = SCREEN,
                             height: int = 300) -> go.Figure:
    """Bars: probability of each generated token (positions start..), on 0..1; a diamond marks the
    most likely alternative token when it is not the chosen one. Hover: the top-k list."""
    n = len(steps)
    x = np.arange(start, start + n)
    prob = f32([s.get("prob", np.nan) for s in steps])
    hover, alt_y, alt_text = [], [], []
    for s in steps:
        tops = [t for t in s.get("top") or [] if t.get("token_id") != s.get("token_id")]
        lines = "<br>".join(f"{escape_markup(show_token(t.get('token', '')))}: {float(t.get('prob', 0)):.3f}"
                            for t in (s.get("top") or []))
        hover.append(lines or "no alternatives recorded")
        alt_y.append(float(tops[0]["prob"]) if tops else np.nan)
        alt_text.append(escape_markup(show_token(tops[0].get("token", ""))) if tops else "")
    labels = [escape_markup(token_label(int(i), s.get("token", ""))) for i, s in zip(x, steps)]
    traces = [dict(type="bar", x=x, y=prob, name="generated token", marker=dict(color=BAR_COLOUR),
                   customdata=np.array([labels, hover], dtype=object).T.tolist() if n else [],
                   hovertemplate="%{customdata[0]}<br>p = %{y:.3f}<br><b>top tokens</b><br>%{customdata[1]}"
                                 "<extra></extra>"),
              dict(type="scatter", x=x, y=f32(alt_y), mode="markers", name="best alternative", text=alt_text,
                   marker=dict(symbol="diamond", size=9, color=ALT_COLOUR, line=dict(width=0.8, color="#222")),
                   hovertemplate="best alternative %{text}: p = %{y:.3f}<extra></extra>")]
    few = n <= 64
    xaxis = dict(title=dict(text="generated token (position)"))
    if few:
        xaxis.update(tickmode="array", tickvals=x.tolist(), tickangle=-60,
                     ticktext=[escape_markup(show_token(s.get("token", ""))) for s in steps])
    layout = dict(title=dict(text=escape_markup(title)), height=height + (40 if few else 0), bargap=0.15,
                  xaxis=xaxis, yaxis=dict(title=dict(text="probability"), range=[0, 1.02]),
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    return make_figure(traces, layout, template)
