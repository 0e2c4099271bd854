"""Entropy: layers x heads normalised-entropy map with collapse flags, entropy by position."""
from __future__ import annotations

import warnings

import numpy as np
from dash import Input, Output, callback, html

from .. import ids
from ..components import graph, notice, section
from ..figures import empty_figure, layer_head_map, query_profile
from ..templates import SCREEN, SEQUENTIAL
from .common import Analysis, on_analysis, select_head_on_click

EXPORT_CONTROLS = ()


def layout(**query) -> html.Div:
    return html.Div([
        html.Div([section("Normalised entropy per head", graph(ids.EN_MAP, 560),
                          help_text="Mean over queries of H_i / log(visible keys): 0 = all mass on one key, "
                                    "1 = uniform. x marks collapsed heads. Click a cell to select the head."),
                  section("Collapse flags", html.Div(id=ids.EN_FLAGS))], className="grid2"),
        section("Entropy by position", graph(ids.EN_PROFILE, 320),
                help_text="Normalised entropy of each query: the selected head, the mean over its layer's "
                          "heads and the mean over all heads."),
    ], id=ids.view("entropy"), className="view")


def render(res, summ: dict, selected, template: str = SCREEN):
    en = res.extras.get("entropy")
    l, h = selected
    enm = np.asarray(en["entropy_norm_mean"], float) if en else np.asarray(summ["entropy_norm_mean"], float)
    collapsed = np.asarray(en["collapsed"], bool) if en else None
    f_map = layer_head_map(enm, label="norm. entropy", selected=selected, zmin=0, zmax=1, colorscale=SEQUENTIAL,
                           flags=collapsed, flag_name="collapsed", template=template)
    per_q = summ["entropy_norm"]
    with warnings.catch_warnings():             # rows with < 2 visible keys are NaN by definition
        warnings.simplefilter("ignore", RuntimeWarning)
        series = {f"head {l}.{h}": per_q[l, h],
                  f"layer {l} mean": np.nanmean(per_q[l], 0),
                  "all heads": np.asarray(en["query_profile"], float) if en and en.get("query_profile") is not None
                  else np.nanmean(per_q, (0, 1))}
    series = {k: np.asarray([np.nan if v is None else v for v in s], float) for k, s in series.items()}
    f_prof = query_profile(series, res.tokens, ylabel="normalised entropy", template=template)
    if not en:
        return f_map, f_prof, notice("collapse flags: not available yet (analysis sections missing)")
    heads = en.get("collapsed_heads") or []
    flags = html.Div([
        html.P(f"threshold {en.get('collapse_threshold')}: {len(heads)} of {res.n_layers * res.n_heads} heads "
               "collapsed (pure sink heads count: their mass sits on token 0)."),
        html.P(", ".join(heads[:120]) + (" …" if len(heads) > 120 else ""), className="mono"),
    ])
    return f_map, f_prof, flags


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.EN_MAP, "figure"), Output(ids.EN_PROFILE, "figure"), Output(ids.EN_FLAGS, "children"),
          Input(ids.STATE, "data"))
@on_analysis("entropy", lambda msg: (empty_figure(msg), empty_figure(msg), ""))
def render_entropy(a: Analysis):
    return render(a.res, a.summ, a.head)


select_head_on_click(ids.EN_MAP)
