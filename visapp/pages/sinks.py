"""Sinks: per-layer sink curves, sink rate against eps, the layer x head sink map, hidden-sink tokens."""
from __future__ import annotations

import numpy as np
from dash import Input, Output, callback, dcc, html

from .. import ids, service
from ..components import controls, graph, labelled, notice, plain_token, section, table
from ..figures import empty_figure, layer_curves, layer_head_map, threshold_curve
from ..templates import SCREEN
from ..view_settings import DEFAULT
from .common import Analysis, on_analysis, select_head_on_click

EPS_GRID = np.linspace(0, 1, 101)
EXPORT_CONTROLS = (("eps", ids.SK_EPS, "value"),)


def layout(**query) -> html.Div:
    return html.Div([
        section("Sinks", controls(labelled("eps (sink rate)", dcc.Slider(
            id=ids.SK_EPS, min=0.05, max=0.95, step=0.05, value=DEFAULT.eps, marks={0.1: "0.1", 0.3: "0.3", 0.5: "0.5",
                                                                           0.7: "0.7", 0.9: "0.9"},
            tooltip={"placement": "bottom"}), width="360px")),
                html.Div([graph(ids.SK_LAYERS, 320), graph(ids.SK_RATE, 320)], className="grid2"),
                help_text="Sink mass = mean attention a query puts on token 0; a head is a sink head when its "
                          "sink mass exceeds eps. Hidden sinks are later tokens that soak up attention (ACT)."),
        html.Div([section("Sink mass per head", graph(ids.SK_MAP, 520),
                          help_text="Click a cell to select the head."),
                  section("Hidden sinks", html.Div(id=ids.SK_TABLE))], className="grid2"),
    ], id=ids.view("sinks"), className="view")


def render(res, summ: dict, eps: float, selected, service, template: str = SCREEN):
    """(layer curves, rate-vs-eps, L x H map, hidden-sink table)."""
    sk = res.extras.get("sinks")
    sm = np.asarray(sk["sink_metric"], float) if sk else np.asarray(summ["sink_metric"], float)
    ftm = np.asarray(sk["first_token_mass"], float) if sk else np.asarray(summ["sink_mass_mean"], float)
    curves = {"first-token mass (mean over heads)": ftm.mean(1), "sink mass (mean over heads)": sm.mean(1),
              f"share of heads with sink mass > {eps:g}": (sm > eps).mean(1)}
    f_layers = layer_curves(curves, ylabel="mass / share", title="per layer", y_range=(0, 1.02), template=template)
    rates = service.sink_rate_curve(sm, EPS_GRID)
    rate = float((sm > eps).mean())
    f_rate = threshold_curve(EPS_GRID, rates, xlabel="eps", ylabel="sink rate", marker=eps, template=template,
                             title=f"sink rate {rate:.2f} at eps {eps:g}")
    f_map = layer_head_map(sm, label="sink mass", selected=selected, zmin=0, zmax=1, template=template,
                           flags=sm > eps, flag_name=f"> {eps:g}")
    if not sk:
        return f_layers, f_rate, f_map, notice("hidden sinks: not available yet (analysis sections missing)")
    rows = [(r["index"], plain_token(r["token"]), r["n_heads"], f"{100 * r['frac_heads']:.1f}%",
             r["mean_received"], r["max_received"], ", ".join(r["heads"][:8]) + (" …" if len(r["heads"]) > 8 else ""))
            for r in sk.get("hidden_sinks", [])[:40]]
    if not rows:
        tbl = notice(f"no hidden sinks: no token after the first receives more than tau = {sk.get('tau')} "
                     "mean attention in any head")
    else:
        tbl = html.Div([html.P(f"tau = {sk.get('tau')}; sorted by the number of heads."),
                        table(["pos", "token", "heads", "share", "mean recv.", "max recv.", "heads (first 8)"], rows)])
    return f_layers, f_rate, f_map, tbl


def empty(message: str = "no analysis yet", template: str = SCREEN):
    e = empty_figure(message, template)
    return e, e, e, ""


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.SK_LAYERS, "figure"), Output(ids.SK_RATE, "figure"), Output(ids.SK_MAP, "figure"),
          Output(ids.SK_TABLE, "children"), Input(ids.STATE, "data"), Input(ids.SK_EPS, "value"))
@on_analysis("sinks", empty)
def render_sinks(a: Analysis, eps):
    return render(a.res, a.summ, float(eps or 0.3), a.head, service)


select_head_on_click(ids.SK_MAP)
