"""Model view (BertViz): every layer x head attention map as a small multiple; a click opens the head."""
from __future__ import annotations

from typing import Optional

import numpy as np
from dash import Input, Output, State, callback, html
from dash.exceptions import PreventUpdate

from .. import ids, service, urlstate
from ..components import graph, section
from ..figures import empty_figure
from ..figures.model_view import MAX_PANEL_CELLS, model_view
from ..templates import SCREEN
from .common import Analysis, head_from_click, on_analysis

BUDGET_S = 1.5          # server time to build and serialise the figure (bench/bench_model_view.py)
HELP = (f"Every head's attention map, layer 0 on top, one column per head; log colour scale (token 0 often "
        f"holds most of the mass). Texts up to {MAX_PANEL_CELLS} tokens show full maps; longer ones the "
        f"analysis' pooled block means, merged to at most {MAX_PANEL_CELLS} blocks per side. Click a map to "
        f"open that head. Render budget: at most layers × heads × {MAX_PANEL_CELLS + 1}² cells drawn as one "
        f"image, built and serialised in under {BUDGET_S:g} s of server time (30 × 9 heads at 2048 tokens: "
        "see bench/results/model_view_cpu.md).")


def layout(**query) -> html.Div:
    return html.Div([
        section("Model view: every head", html.Div(id=ids.MV_NOTE, className="help"),
                graph(ids.MV_GRAPH, 600), help_text=HELP),
    ], id=ids.view("model"), className="view")


def full_maps(res, key: str, service) -> Optional[np.ndarray]:
    """[L, H, N, N] full maps when the text is short enough for full panels and they are stored."""
    if res.n_tokens > MAX_PANEL_CELLS or not res.extras.get("has_full_maps"):
        return None
    layers = [service.layer_maps(key, l) for l in range(res.n_layers)]
    return None if any(m is None for m in layers) else np.stack(layers)


def render_view(res, maps: Optional[np.ndarray], selected, template: str = SCREEN):
    """The model view of a cached analysis: full maps when given, else its pooled block means."""
    return model_view(maps=maps, pooled=None if maps is not None else res.pooled_mean, pool=res.pool,
                      n_tokens=res.n_tokens, causal=res.causal, selected=selected, template=template)


def note(res) -> str:
    if res.n_tokens <= MAX_PANEL_CELLS:
        return f"{res.n_tokens} tokens: full maps, one cell per (query, key)."
    return (f"{res.n_tokens} tokens: block means of the pooled maps (pool {res.pool}, merged to at most "
            f"{MAX_PANEL_CELLS} blocks per side); the head view zooms to full resolution.")


# ---------------------------------------------------------------- callbacks

def _placeholder(msg: str):
    return empty_figure(msg), ""


@callback(Output(ids.MV_GRAPH, "figure"), Output(ids.MV_NOTE, "children"), Input(ids.STATE, "data"))
@on_analysis("model", _placeholder)
def render_model(a: Analysis):
    return render_view(a.res, full_maps(a.res, a.key, service), a.head), note(a.res)


@callback(Output(ids.URL, "href", allow_duplicate=True), Input(ids.MV_GRAPH, "clickData"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def open_head(click, state):
    """A click on a panel opens that head in the head view (the URL carries the head)."""
    sel = head_from_click(click)
    if sel is None or not state:
        raise PreventUpdate
    st = dict(state, view="head", head=f"{sel[0]}.{sel[1]}")
    return "/head" + urlstate.to_search(st)
