"""Head overview (Dodrio's atlas): layers x heads glyphs, colour = metric, size = importance, symbol = role."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from .. import ids, service
from ..components import controls, graph, labelled, section, table
from ..figures import empty_figure, head_grid
from ..templates import SCREEN, SEQUENTIAL_SCALES
from ..view_settings import DEFAULT, METRICS
from .common import Analysis, changed, on_analysis, query_state, select_head_on_click

EXPORT_CONTROLS = (("size_by", ids.OV_SIZE, "value"), ("colours", ids.OV_COLORS, "value"))


def layout(**query) -> html.Div:
    st = query_state("overview", query)
    return html.Div([
        section("Head overview",
                controls(
                    labelled("Colour by", dcc.Dropdown(id=ids.OV_METRIC, options=[{"label": v, "value": k}
                                                                                 for k, v in METRICS.items()],
                                                       value=st["metric"], clearable=False, style={"width": "300px"})),
                    labelled("Size by", dcc.RadioItems(id=ids.OV_SIZE, value=DEFAULT.size_by, inline=True,
                                                       options=[{"label": "importance", "value": "importance"},
                                                                {"label": "constant", "value": "none"}])),
                    labelled("Colours", dcc.RadioItems(id=ids.OV_COLORS, value=DEFAULT.colours, inline=True,
                                                       options=list(SEQUENTIAL_SCALES)))),
                html.Div([graph(ids.OV_GRAPH, 640), html.Div(id=ids.OV_SIDE, className="side")], className="split"),
                help_text="One glyph per head. Click a glyph to select that head in every view; hover for its "
                          "numbers. Symbols show each head's role; glyph size follows head importance when "
                          "it was computed (options: importance)."),
    ], id=ids.view("overview"), className="view")


def metric_values(res, summ: dict, metric: str, imp: Optional[dict] = None) -> tuple[Optional[np.ndarray], Optional[str]]:
    """[L, H] values of a metric, or (None, why it is missing)."""
    ex = res.extras
    if metric in summ and np.ndim(summ[metric]) == 2:
        return np.asarray(summ[metric], float), None
    if metric == "first_token_mass":
        return np.asarray(summ["sink_mass_mean"], float), None
    if metric.startswith("role:"):
        role = metric.split(":", 1)[1]
        roles = ex.get("roles") or {}
        scores = (roles.get("scores") or {}).get(role)
        if scores is None:
            why = (roles.get("unavailable") or {}).get(role) or ("head roles not computed" if not roles else "not computed")
            return None, ui_words(why)
        return np.asarray(scores, float), None
    if metric == "importance":
        imp = imp or ex.get("importance") or {}
        if not imp.get("available"):
            return None, imp.get("reason") or ("tick 'importance' under options and analyse again, or trace a "
                                               "token (Trace view): its head contributions size the glyphs")
        return np.asarray(imp["importance"], float), None
    return None, "unknown metric"


_CLI_PROBE = re.compile(r"--probes\s+([a-z_]+)")


def ui_words(message: str) -> str:
    """A compute message that names a CLI flag, reworded to name the input panel's control."""
    return _CLI_PROBE.sub(lambda m: f"tick '{m.group(1)}' under Options → Probes (head roles) and analyse again",
                          message).replace("--importance", "Options → head importance")


def role_labels(res) -> Optional[list]:
    labels = (res.extras.get("roles") or {}).get("labels")
    if labels is None or np.shape(labels) != (res.n_layers, res.n_heads):
        return None
    return labels


def importance(res, imp: Optional[dict] = None) -> Optional[np.ndarray]:
    """Glyph sizes: imp (service.importance_of: the analysis' importance, else the latest trace's head
    contributions) or the analysis' own importance section."""
    imp = imp or res.extras.get("importance") or {}
    return np.asarray(imp["importance"], float) if imp.get("available") else None


def render_grid(res, summ: dict, metric: str, size_by: str, colours: str, selected: tuple[int, int],
                template: str = SCREEN, imp: Optional[dict] = None):
    values, why = metric_values(res, summ, metric, imp)
    if values is None:
        return empty_figure(f"{METRICS.get(metric, metric)}: not available ({why})", template, height=400)
    hover = {"sink mass": summ["sink_metric"], "entropy (norm.)": summ["entropy_norm_mean"],
             "prev-token": summ["prev_token_mean"]}
    return head_grid(values, metric=METRICS.get(metric, metric).split(" (")[0], roles=role_labels(res),
                     importance=importance(res, imp) if size_by == "importance" else None, selected=selected,
                     hover=hover, template=template, colorscale=colours,
                     title=f"{res.model}: {res.n_layers} layers × {res.n_heads} heads, {res.n_tokens} tokens")


def render_side(res, summ: dict, sel: tuple[int, int]) -> list:
    l, h = sel
    hid = f"{l}.{h}"
    fields = (res.extras.get("head_fields") or {}).get(hid, {})
    rows = [(name, float(summ[key][l, h])) for name, key in
            (("sink mass (token 0)", "sink_metric"), ("mass on first S tokens", "sink_s_mass_mean"),
             ("entropy (nats)", "entropy_mean"), ("normalised entropy", "entropy_norm_mean"),
             ("previous-token mass", "prev_token_mean"), ("local mass", "local_mean"),
             ("mean distance", "exp_dist_mean"), ("top-1 weight", "top1_prob_mean"))]
    out = [html.H4(f"Head {hid}"), html.P(["role: ", html.B(fields.get("role", "not available yet"))]),
           table(["metric", "value"], rows)]
    scores = fields.get("role_scores")
    if scores:
        out += [html.H5("Role scores"), table(["role", "score"], sorted(scores.items(), key=lambda kv: -kv[1]))]
    if "importance" in fields:
        out.append(html.P(f"importance |dL/dgate| = {fields['importance']:.4g}"))
    if fields.get("collapsed"):
        out.append(html.P("entropy collapsed", className="flag"))
    counts = (res.extras.get("roles") or {}).get("counts")
    if counts:
        out += [html.H5("Heads per role"), table(["role", "heads"], sorted(counts.items(), key=lambda kv: -kv[1]))]
    return out


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.OV_GRAPH, "figure"), Output(ids.OV_SIDE, "children"),
          Input(ids.STATE, "data"), Input(ids.OV_SIZE, "value"), Input(ids.OV_COLORS, "value"))
@on_analysis("overview", lambda msg: (empty_figure(msg, height=400), ""))
def render_overview(a: Analysis, size_by, colours):
    imp = service.importance_of(a.key) if (size_by or DEFAULT.size_by) == "importance" or a.state["metric"] == "importance" \
        else None
    return (render_grid(a.res, a.summ, a.state["metric"], size_by or DEFAULT.size_by, colours or DEFAULT.colours, a.head,
                        imp=imp), render_side(a.res, a.summ, a.head))


@callback(Output(ids.SELECT, "data", allow_duplicate=True), Input(ids.OV_METRIC, "value"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def select_metric(metric, state=None):
    if not isinstance(metric, str) or metric not in METRICS:
        raise PreventUpdate
    return changed(state, metric=metric)


select_head_on_click(ids.OV_GRAPH)
