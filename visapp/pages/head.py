"""Head detail: the head's map (full, or pooled with click-to-zoom for long texts), per-query entropy,
attention received per key with sinks marked, token graph, and dependency arcs against attention."""
from __future__ import annotations

from typing import Optional

import numpy as np
from dash import Input, Output, State, callback, dcc, html, no_update
from dash.exceptions import PreventUpdate

from compute.errors import UserError

from .. import ids, service, urlstate
from ..components import controls, edge_threshold, graph, labelled, section
from ..figures import (arc_diagram, attention_heatmap, empty_figure, pooled_heatmap, query_profile,
                       received_bars, token_labels, zoom_window)
from ..state import background_manager
from ..templates import SCREEN
from ..view_settings import DEFAULT
from .common import Analysis, changed, current, head_rows, on_analysis, query_state

EXPORT_CONTROLS = (("pool", ids.HD_POOL, "value"), ("head_threshold", ids.HD_THRESHOLD, "value"),
                   ("zoom", ids.ZOOM, "data"))


def _head_options(state: dict) -> tuple[list, list]:
    """Layer and head choices: the model's range once its analysis is cached, else the URL's head."""
    a = current(state)
    l, h = urlstate.head_of(a.state if a else state)
    L, H = (a.res.n_layers, a.res.n_heads) if a else (l + 1, h + 1)
    return ([{"label": str(i), "value": i} for i in range(L)] if a else [{"label": str(l), "value": l}],
            [{"label": str(i), "value": i} for i in range(H)] if a else [{"label": str(h), "value": h}])


def layout(**query) -> html.Div:
    st = query_state("head", query)
    a = current(st)
    l, h = urlstate.head_of(a.state if a else st)
    opts_l, opts_h = _head_options(st)
    return html.Div([
        section("Head detail",
                controls(
                    labelled("Layer", dcc.Dropdown(id=ids.HD_LAYER, options=opts_l, value=l, clearable=False,
                                                   style={"width": "90px"})),
                    labelled("Head", dcc.Dropdown(id=ids.HD_HEAD, options=opts_h, value=h, clearable=False,
                                                  style={"width": "90px"})),
                    labelled("Colour scale", dcc.RadioItems(
                        id=ids.HD_SCALE, value=st["scale"], inline=True,
                        options=[{"label": "log (sink-aware)", "value": "log"},
                                 {"label": "token 0 apart", "value": "split"},
                                 {"label": "linear", "value": "linear"}])),
                    labelled("Pooled blocks", dcc.RadioItems(
                        id=ids.HD_POOL, value=DEFAULT.pool, inline=True,
                        options=[{"label": "max (keeps sinks)", "value": "max"}, {"label": "mean", "value": "mean"}]))),
                html.Div(id=ids.HD_SUMMARY, className="summary-line"),
                html.Div(id=ids.HD_NOTE),
                dcc.Loading(graph(ids.HD_MAP, 560), type="dot", delay_show=400),
                dcc.Loading(graph(ids.HD_ZOOM, 10), type="dot"),
                help_text="Rows are queries, columns keys; cells above the diagonal of a causal model are blank "
                          "(never computed), not zero. Token labels read (position)token."),
        html.Div([section("Entropy per query", graph(ids.HD_ENTROPY, 260)),
                  section("Attention received per key", graph(ids.HD_RECEIVED, 260))], className="grid2"),
        section("Token graph",
                edge_threshold(ids.HD_THRESHOLD, DEFAULT.head_threshold),
                graph(ids.HD_GRAPH, 360),
                help_text="Arcs from each query to the keys it attends to with weight above the threshold "
                          "(token 0 left out: its arcs would hide the rest)."),
        section("Dependency parse vs attention", graph(ids.HD_DEPS, 380),
                help_text="Above: each query's strongest key (token 0 left out). Below: the spaCy dependency "
                          "parse, each word at its first token (Dodrio's dependency view)."),
    ], id=ids.view("head"), className="view")


def render_map(res, full: Optional[np.ndarray], l: int, h: int, scale: str, pool_stat: str,
               template: str = SCREEN):
    """Main map: the full map when stored, else the pooled map (click a block to zoom)."""
    title = f"layer {l} head {h}"
    if full is not None:
        labels = token_labels(res.tokens)
        return attention_heatmap(full, labels, labels, causal=res.causal, scale=scale, title=title,
                                 template=template), None
    pooled = (res.pooled_max if pool_stat == "max" else res.pooled_mean)
    if pooled is None:
        return empty_figure("pooled maps are not in this result", template), None
    fig = pooled_heatmap(pooled[l, h], res.pool, res.n_tokens, causal=res.causal,
                         scale="linear" if scale == "split" else scale, stat=pool_stat,
                         title=f"{title}: {pool_stat} over {res.pool}×{res.pool}-token blocks")
    return fig, (f"{res.n_tokens} tokens: the map is pooled into {res.pool}×{res.pool} blocks "
                 "(nothing n×n goes to the browser). Click a block to load that region at full resolution.")


def render_zoom(res, zoom: Optional[dict], l: int, h: int, scale: str, template: str = SCREEN):
    if not zoom or zoom.get("head") != [l, h]:
        return empty_figure("", template, height=10)
    q0, q1, k0, k1 = zoom["q0"], zoom["q1"], zoom["k0"], zoom["k1"]
    return attention_heatmap(zoom["z"], token_labels(res.tokens, q0, q1), token_labels(res.tokens, k0, k1),
                             causal=res.causal, scale=scale, q_start=q0, k_start=k0,
                             title=f"layer {l} head {h}: queries {q0}–{q1 - 1} × keys {k0}–{k1 - 1} "
                                   "(full resolution)", template=template)


def render_entropy(res, summ: dict, l: int, h: int, template: str = SCREEN):
    series = {"normalised entropy": np.nan_to_num(summ["entropy_norm"][l, h], nan=np.nan),
              "entropy (nats)": res.entropy[l, h]}
    return query_profile(series, res.tokens, ylabel="entropy", template=template,
                         title=f"mean normalised {float(summ['entropy_norm_mean'][l, h]):.3f}")


def sink_keys(res, l: int, h: int) -> list[int]:
    """Token 0 plus the hidden sinks of this head (compute.analysis sinks section)."""
    out = [0]
    for rec in (res.extras.get("sinks") or {}).get("hidden_sinks") or []:
        if f"{l}.{h}" in rec.get("heads", []):
            out.append(int(rec["index"]))
    return out


def render_received(res, summ: dict, l: int, h: int, template: str = SCREEN):
    return received_bars(summ["received"][l, h], res.tokens, sinks=sink_keys(res, l, h), template=template,
                         title=f"sink mass {float(summ['sink_metric'][l, h]):.3f}")


def render_token_graph(res, rows, l: int, h: int, threshold: float, service, template: str = SCREEN):
    z, q0, k0 = rows
    if z is None:
        return empty_figure("click a block of the pooled map to load full-resolution attention", template, 200)
    edges = service.token_edges_block(z, q0, k0, res.tokens, threshold=threshold)
    span = (min(q0, k0), max(q0 + z.shape[0], k0 + z.shape[1]))
    return arc_diagram(res.tokens, edges, upper_name=f"attention ≥ {threshold:g}", window=span,
                       node_values=None, title=f"layer {l} head {h}: {len(edges)} edges", template=template)


def top1_edges(z: np.ndarray, q0: int, k0: int, causal: bool) -> list[tuple[int, int, float]]:
    """Each query's strongest key other than token 0 and itself (query, key, weight)."""
    a = np.nan_to_num(np.asarray(z, float)).copy()
    for r in range(a.shape[0]):
        q = q0 + r
        if 0 <= q - k0 < a.shape[1]:
            a[r, q - k0] = 0.0
    if k0 == 0:
        a[:, 0] = 0.0
    j = a.argmax(1)
    return [(q0 + r, k0 + int(j[r]), float(a[r, j[r]])) for r in range(a.shape[0]) if a[r, j[r]] > 0]


def render_deps(res, rows, l: int, h: int, template: str = SCREEN):
    dep = res.extras.get("dependency") or {}
    if not dep.get("available"):
        return empty_figure(f"dependency parse: not available ({dep.get('reason', 'not computed yet')})",
                            template, 200)
    z, q0, k0 = rows
    if z is None:
        return empty_figure("click a block of the pooled map to load full-resolution attention", template, 200)
    span = (min(q0, k0), max(q0 + z.shape[0], k0 + z.shape[1]))
    upper = top1_edges(z, q0, k0, res.causal)
    lower = [(int(a), int(b), 1.0) for a, b, _ in dep["edges"]]
    score = ((res.extras.get("head_fields") or {}).get(f"{l}.{h}") or {}).get("role_scores", {}).get("syntactic")
    title = f"layer {l} head {h}" + (f": syntactic score {score:.3f}" if score is not None else "")
    return arc_diagram(res.tokens, upper, lower=lower, upper_name="attention (top-1 key)",
                       lower_name="dependency", window=(span[0], min(span[1], span[0] + 120)), title=title,
                       template=template, height=420)


def render_summary(res, summ: dict, l: int, h: int) -> str:
    fields = (res.extras.get("head_fields") or {}).get(f"{l}.{h}", {})
    role = fields.get("role", "n/a")
    return (f"head {l}.{h} · role {role} · sink mass {float(summ['sink_metric'][l, h]):.3f} · "
            f"normalised entropy {float(summ['entropy_norm_mean'][l, h]):.3f} · previous-token "
            f"{float(summ['prev_token_mean'][l, h]):.3f}")


# ---------------------------------------------------------------- callbacks

def _zoom(zoom_store) -> Optional[dict]:
    return service.get_zoom(zoom_store.get("zk")) if zoom_store else None


def _placeholder(msg: str):
    e = empty_figure(msg)
    return e, empty_figure("", height=10), {"display": "none"}, "", e, e, e, msg


@callback(Output(ids.HD_MAP, "figure"), Output(ids.HD_ZOOM, "figure"), Output(ids.HD_ZOOM, "style"),
          Output(ids.HD_NOTE, "children"), Output(ids.HD_ENTROPY, "figure"), Output(ids.HD_RECEIVED, "figure"),
          Output(ids.HD_DEPS, "figure"), Output(ids.HD_SUMMARY, "children"),
          Input(ids.STATE, "data"), Input(ids.HD_POOL, "value"), Input(ids.ZOOM, "data"))
@on_analysis("head", _placeholder)
def render_head(a: Analysis, pool_stat, zoom_store):
    res, summ, (l, h) = a.res, a.summ, a.head
    zoom = _zoom(zoom_store)
    rows = head_rows(res, a.key, l, h, service, zoom)
    full = rows[0] if rows[0] is not None and rows[1:] == (0, 0) and rows[0].shape == (res.n_tokens,) * 2 else None
    fig, note = render_map(res, full, l, h, a.state["scale"], pool_stat or "max")
    zfig = render_zoom(res, zoom, l, h, a.state["scale"])
    zstyle = {"display": "block"} if zoom and zoom.get("head") == [l, h] else {"display": "none"}
    return (fig, zfig, zstyle, html.P(note, className="help") if note else "",
            render_entropy(res, summ, l, h), render_received(res, summ, l, h),
            render_deps(res, rows, l, h), render_summary(res, summ, l, h))


@callback(Output(ids.HD_GRAPH, "figure"), Input(ids.STATE, "data"), Input(ids.HD_THRESHOLD, "value"),
          Input(ids.ZOOM, "data"))
@on_analysis("head", lambda msg: empty_figure(msg))
def render_head_graph(a: Analysis, threshold, zoom_store):
    l, h = a.head
    rows = head_rows(a.res, a.key, l, h, service, _zoom(zoom_store))
    return render_token_graph(a.res, rows, l, h, float(threshold or 0.1), service)


@callback(Output(ids.HD_LAYER, "options"), Output(ids.HD_HEAD, "options"), Input(ids.STATE, "data"))
def head_options(state):
    """The dropdowns' ranges follow the analysis (their values follow the user, see select_head)."""
    if not state:
        raise PreventUpdate
    return _head_options(state)


@callback(Output(ids.SELECT, "data", allow_duplicate=True), Input(ids.HD_LAYER, "value"), Input(ids.HD_HEAD, "value"),
          State(ids.STATE, "data"), prevent_initial_call=True)
def select_head(layer, head_, state=None):
    try:
        return changed(state, head=f"{int(layer)}.{int(head_)}")
    except (TypeError, ValueError):
        raise PreventUpdate from None


@callback(Output(ids.SELECT, "data", allow_duplicate=True), Input(ids.HD_SCALE, "value"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def select_scale(scale, state=None):
    if not isinstance(scale, str) or scale not in urlstate.SCALES:
        raise PreventUpdate
    return changed(state, scale=scale)


@callback(Output(ids.ZOOM_REQ, "data"), Input(ids.HD_MAP, "clickData"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def zoom_request(click, state):
    """A click on a pooled map asks for that region at full resolution (long texts only)."""
    a = current(state)
    if not a or not click or not click.get("points"):
        raise PreventUpdate
    res = a.res
    if res.extras.get("has_full_maps"):
        raise PreventUpdate
    p = click["points"][0]
    try:
        cq, ck = int(round(float(p["y"]))), int(round(float(p["x"])))
    except (KeyError, TypeError, ValueError):
        raise PreventUpdate
    l, h = a.head
    q0, q1, k0, k1 = zoom_window(cq, ck, res.n_tokens, service.zoom_span(res.n_tokens), res.causal)
    return {"a": a.key, "head": [l, h], "q0": q0, "q1": q1, "k0": k0, "k1": k1}


def zoom_job(set_progress, req):
    if not req:
        return no_update
    try:
        service.job_setup()
        set_progress("loading the region at full resolution…")
        l, h = req["head"]
        zk = service.compute_zoom(req["a"], l, h, req["q0"], req["q1"], req["k0"], req["k1"])
        return {"zk": zk, "head": [l, h]}
    except UserError as exc:
        set_progress(f"zoom failed: {exc}")
        return no_update


callback(Output(ids.ZOOM_JOB, "data"), Input(ids.ZOOM_REQ, "data"), background=True, manager=background_manager(),
         interval=400, prevent_initial_call=True, progress=[Output(ids.HD_NOTE, "children")])(zoom_job)
