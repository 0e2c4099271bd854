"""Dash callbacks: thin glue between components, visapp.service (data) and visapp.views (rendering).

Data flow (no cycles): the URL is the source of truth for the view state. `sync_state` merges URL
changes, head clicks, control changes and finished analyses into the STATE store and writes the URL
back. `boot` (on page load / view change) asks the analysis job to run when the wanted analysis is
not cached. The analysis, zoom and comparison jobs are background callbacks (visapp.state manager);
they write only small keys into stores, never arrays.

Every function here is a plain function too (tests call them without a browser).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from dash import Input, Output, State, callback, ctx, html, no_update
from dash.exceptions import PreventUpdate

from compute.errors import UserError

from . import ids, service, urlstate
from .figures import empty_figure, zoom_window
from .presets import PRESETS
from .state import background_manager
from .urlstate import VIEWS
from .views import basin, entropy, generate, graphs, head, overview, sinks, variants

log = logging.getLogger(__name__)
CLICK_SOURCES = (ids.OV_GRAPH, ids.SK_MAP, ids.EN_MAP, ids.GR_HEADS)
PENDING = "analysing… (the first analysis loads the model: allow a few seconds)"
EXPIRED_LINK = ("the analysis in this link has expired (results are kept for ATTNVIS_CACHE_TIMEOUT_S); "
                "showing the default example instead: analyse the text again to get a new link")


# ---------------------------------------------------------------- helpers

def head_from_click(click: Optional[dict]) -> Optional[tuple[int, int]]:
    """(layer, head) from a clickData of the overview grid, a layer x head map or the head graph."""
    if not click or not click.get("points"):
        return None
    p = click["points"][0]
    cd = p.get("customdata")
    try:
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            return int(cd[0]), int(cd[1])
        if p.get("x") is not None and p.get("y") is not None:
            return int(round(float(p["y"]))), int(round(float(p["x"])))
    except (TypeError, ValueError):
        return None
    return None


def result_for(state: Optional[dict]):
    """(res, summary) of the state's analysis, or None while it is not cached."""
    if not state or not state.get("a"):
        return None
    try:
        res = service.get_result(state["a"])
    except service.NotCached:
        return None
    return res, service.summary(res)


def active(state: Optional[dict], view: str) -> bool:
    return bool(state) and state.get("view") == view


def error_box(message: str) -> html.Div:
    return html.Div([html.B("Error: "), message, html.Span(" (the previous results are still shown)",
                                                            className="help")], className="error")


# ---------------------------------------------------------------- state and routing

@callback(
    Output(ids.URL, "search"), Output(ids.STATE, "data"),
    Output(ids.OV_METRIC, "value"), Output(ids.HD_SCALE, "value"),
    Output(ids.HD_LAYER, "value"), Output(ids.HD_HEAD, "value"),
    Output(ids.HD_LAYER, "options"), Output(ids.HD_HEAD, "options"),
    Input(ids.URL, "pathname"), Input(ids.URL, "search"), Input(ids.DONE, "data"),
    *[Input(s, "clickData") for s in CLICK_SOURCES],
    Input(ids.HD_LAYER, "value"), Input(ids.HD_HEAD, "value"),
    Input(ids.OV_METRIC, "value"), Input(ids.HD_SCALE, "value"),
)
def sync_state(pathname, search, done, *rest):
    clicks, (layer, head_, metric, scale) = rest[:len(CLICK_SOURCES)], rest[len(CLICK_SOURCES):]
    trig = ctx.triggered_id
    st = urlstate.parse(pathname, search)
    if trig == ids.DONE and done:
        st["a"], st["model"] = done["key"], done.get("model", "")
    elif trig in CLICK_SOURCES:
        sel = head_from_click(clicks[CLICK_SOURCES.index(trig)])
        if sel is None:
            raise PreventUpdate
        st["head"] = f"{sel[0]}.{sel[1]}"
    elif trig in (ids.HD_LAYER, ids.HD_HEAD) and layer is not None and head_ is not None:
        st["head"] = f"{int(layer)}.{int(head_)}"
    elif trig == ids.OV_METRIC and metric in urlstate.METRICS:
        st["metric"] = metric
    elif trig == ids.HD_SCALE and scale in urlstate.SCALES:
        st["scale"] = scale
    if not st["a"]:
        req = service.default_request()
        st["a"], st["model"] = req.key(), req.model
    got = result_for(st)
    L, H = (got[0].n_layers, got[0].n_heads) if got else (None, None)
    if got:
        st["head"] = urlstate.clamp_head(st["head"], L, H)
        st["model"] = got[0].model
    l, h = urlstate.head_of(st)
    new_search = urlstate.to_search(st)
    opts_l = [{"label": str(i), "value": i} for i in range(L)] if L else [{"label": str(l), "value": l}]
    opts_h = [{"label": str(i), "value": i} for i in range(H)] if H else [{"label": str(h), "value": h}]
    return (new_search if new_search != (search or "") else no_update, st, st["metric"], st["scale"], l, h,
            opts_l, opts_h)


@callback(
    *[Output(ids.nav(v), "href") for v in VIEWS], *[Output(ids.nav(v), "className") for v in VIEWS],
    *[Output(ids.view(v), "style") for v in VIEWS],
    Input(ids.STATE, "data"),
)
def navigation(state):
    st = state or dict(urlstate.DEFAULTS)
    q = urlstate.to_search(st)
    hrefs = [f"/{v}{q}" for v in VIEWS]
    classes = ["tab tab-active" if st.get("view") == v else "tab" for v in VIEWS]
    styles = [{"display": "block"} if st.get("view") == v else {"display": "none"} for v in VIEWS]
    return (*hrefs, *classes, *styles)


@callback(Output(ids.AUTORUN, "data"), Input(ids.URL, "pathname"), State(ids.URL, "search"))
def boot(pathname, search):
    """Ask for the wanted analysis when it is not cached: the URL's (if its request is known) or the
    default example. Starts loading that model in this process so the job inherits it."""
    st = urlstate.parse(pathname, search)
    default = service.default_request()
    key = st["a"] or default.key()
    if service.is_cached(key):
        raise PreventUpdate
    req = service.get_request(key) if st["a"] else None
    expired = {"expired": True} if st["a"] and req is None else {}     # the link outlived its request
    req = req or default
    if service.is_cached(req.key()):
        return {"done": req.key(), "model": req.model, "t": time.time(), **expired}
    service.warm_up(req.model, wait=True)       # the job forks after imports and loading are done
    return {"request": req.to_dict(), "t": time.time(), **expired}


@callback(Output(ids.RUN_INFO, "children"), Input(ids.STATE, "data"))
def run_info(state):
    got = result_for(state)
    if not got:
        return PENDING
    res = got[0]
    bits = [res.model, f"{res.n_tokens} tokens", f"{res.n_layers}×{res.n_heads} heads", f"backend {res.backend}",
            f"{res.timings.get('total_s', 0):.1f} s"]
    if res.loss is not None:
        bits.append(f"loss {res.loss:.3f}")
    if res.extras.get("generation"):
        bits.append(f"+{res.extras['generation']['new_tokens']} generated")
    return " · ".join(bits)


@callback(
    Output(ids.TEXT, "value"), Output(ids.MODEL, "value"), Output(ids.MODEL_PATH, "value"),
    Output(ids.BACKEND, "value"), Output(ids.MAX_TOKENS, "value"), Output(ids.SINK_TOKENS, "value"),
    Output(ids.ITEMS, "value"), Output(ids.PROBES, "value"), Output(ids.IMPORTANCE, "value"),
    Output(ids.FILLED, "data"),
    Input(ids.STATE, "data"), *[Input(ids.preset(p), "n_clicks") for p in PRESETS],
    State(ids.FILLED, "data"),
    prevent_initial_call=True,
)
def fill_panel(state, *rest):
    """Show the inputs of the analysis on screen (once per analysis), or load a preset's text."""
    filled = rest[-1]
    trig = ctx.triggered_id
    keep = [no_update] * 10
    if isinstance(trig, str) and trig.startswith(ids.PRESET_PREFIX):
        p = PRESETS[trig[len(ids.PRESET_PREFIX):]]
        keep[0], keep[6] = p["text"], p["items"]
        return tuple(keep)
    key = (state or {}).get("a")
    if not key or key == filled:
        raise PreventUpdate
    req = service.get_request(key)
    if req is None:
        raise PreventUpdate
    got = result_for(state)
    text = req.text
    if got and got[0].extras.get("generation"):
        text = got[0].text                      # continue from prompt + continuation
    registry = {m["name"] for m in service.list_models()}
    model, path = (req.model, "") if req.model in registry else (no_update, req.model)
    return (text, model, path, req.backend, req.max_tokens, req.sink_tokens, req.items, list(req.probes),
            ["on"] if req.importance else [], key)


# ---------------------------------------------------------------- the analysis job

def analysis_job(set_progress, n_analyze, n_generate, autorun, model, path, text, backend, max_tokens,
                 sink_tokens, items, probes, importance, gen_tokens, trigger=None):
    """Runs in a background process: validate, analyse (or generate + analyse), cache. Returns
    (done store, error box)."""
    trig = trigger or ctx.triggered_id
    note = ""
    try:
        if trig == ids.AUTORUN:
            if not autorun:
                return no_update, no_update
            if autorun.get("expired"):
                note = error_box(EXPIRED_LINK)
            if autorun.get("done"):
                return {"key": autorun["done"], "model": autorun.get("model", ""), "t": time.time()}, note
            d = autorun.get("request")           # browser-sent: validated like the input panel's values
            if not isinstance(d, dict):
                raise UserError("the page sent a malformed request; reload it")
            req = service.make_request(**{k: d[k] for k in service.Request.__dataclass_fields__ if k in d})
        else:
            req = service.make_request(
                model=(path or "").strip() or model, text=text, backend=backend, max_tokens=max_tokens,
                sink_tokens=sink_tokens, items=items, probes=probes or (), importance=bool(importance),
                generate=(gen_tokens or 0) if trig == ids.GN_RUN else 0)
        service.job_setup()
        key = service.run_analysis(req, progress=lambda f, m: set_progress((str(int(round(100 * f))), m)))
        return {"key": key, "model": req.model, "t": time.time()}, note
    except UserError as exc:
        return no_update, error_box(str(exc))
    except MemoryError:
        return no_update, error_box("out of memory: try a shorter text or fewer max tokens")
    except Exception as exc:  # never a traceback in the page
        log.exception("analysis failed")
        return no_update, error_box(f"internal error ({exc.__class__.__name__}: {exc})")


callback(
    Output(ids.DONE, "data"), Output(ids.ERROR, "children"),
    Input(ids.ANALYZE, "n_clicks"), Input(ids.GN_RUN, "n_clicks"), Input(ids.AUTORUN, "data"),
    State(ids.MODEL, "value"), State(ids.MODEL_PATH, "value"), State(ids.TEXT, "value"),
    State(ids.BACKEND, "value"), State(ids.MAX_TOKENS, "value"), State(ids.SINK_TOKENS, "value"),
    State(ids.ITEMS, "value"), State(ids.PROBES, "value"), State(ids.IMPORTANCE, "value"),
    State(ids.GN_TOKENS, "value"),
    background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
    progress=[Output(ids.PROGRESS, "value"), Output(ids.PROGRESS_MSG, "children")],
    running=[(Output(ids.ANALYZE, "disabled"), True, False), (Output(ids.GN_RUN, "disabled"), True, False),
             (Output(ids.CANCEL, "disabled"), False, True),
             (Output(ids.PROGRESS_WRAP, "style"), {"display": "block"}, {"display": "none"})],
    cancel=[Input(ids.CANCEL, "n_clicks")],
)(analysis_job)


# ---------------------------------------------------------------- overview

@callback(Output(ids.OV_GRAPH, "figure"), Output(ids.OV_SIDE, "children"),
          Input(ids.STATE, "data"), Input(ids.OV_SIZE, "value"), Input(ids.OV_COLORS, "value"))
def render_overview(state, size_by, colours):
    if not active(state, "overview"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        return empty_figure(PENDING, height=400), ""
    res, summ = got
    sel = urlstate.head_of(state)
    return (overview.render_grid(res, summ, state["metric"], size_by or "importance", colours or "Viridis", sel),
            overview.render_side(res, summ, sel))


# ---------------------------------------------------------------- head detail

def _zoom(zoom_store) -> Optional[dict]:
    return service.get_zoom(zoom_store.get("zk")) if zoom_store else None


@callback(Output(ids.HD_MAP, "figure"), Output(ids.HD_ZOOM, "figure"), Output(ids.HD_ZOOM, "style"),
          Output(ids.HD_NOTE, "children"), Output(ids.HD_ENTROPY, "figure"), Output(ids.HD_RECEIVED, "figure"),
          Output(ids.HD_DEPS, "figure"), Output(ids.HD_SUMMARY, "children"),
          Input(ids.STATE, "data"), Input(ids.HD_POOL, "value"), Input(ids.ZOOM, "data"))
def render_head(state, pool_stat, zoom_store):
    if not active(state, "head"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        e = empty_figure(PENDING)
        return e, empty_figure("", height=10), {"display": "none"}, "", e, e, e, ""
    res, summ = got
    l, h = urlstate.head_of(state)
    zoom = _zoom(zoom_store)
    rows = head.head_rows(res, state["a"], l, h, service, zoom)
    full = service.head_map(state["a"], l, h)            # None for long texts: the pooled map is shown
    fig, note = head.render_map(res, full, l, h, state["scale"], pool_stat or "max")
    zfig = head.render_zoom(res, zoom, l, h, state["scale"])
    zstyle = {"display": "block"} if zoom and zoom.get("head") == [l, h] else {"display": "none"}
    return (fig, zfig, zstyle, html.P(note, className="help") if note else "",
            head.render_entropy(res, summ, l, h), head.render_received(res, summ, l, h),
            head.render_deps(res, rows, l, h), head.render_summary(res, summ, l, h))


@callback(Output(ids.HD_GRAPH, "figure"), Input(ids.STATE, "data"), Input(ids.HD_THRESHOLD, "value"),
          Input(ids.ZOOM, "data"))
def render_head_graph(state, threshold, zoom_store):
    if not active(state, "head"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        return empty_figure(PENDING)
    res, _ = got
    l, h = urlstate.head_of(state)
    rows = head.head_rows(res, state["a"], l, h, service, _zoom(zoom_store))
    return head.render_token_graph(res, rows, l, h, float(threshold or 0.1), service)


@callback(Output(ids.ZOOM_REQ, "data"), Input(ids.HD_MAP, "clickData"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def zoom_request(click, state):
    """A click on a pooled map asks for that region at full resolution (long texts only)."""
    got = result_for(state)
    if not got or not click or not click.get("points"):
        raise PreventUpdate
    res, _ = got
    if res.extras.get("has_full_maps"):
        raise PreventUpdate
    p = click["points"][0]
    try:
        cq, ck = int(round(float(p["y"]))), int(round(float(p["x"])))
    except (KeyError, TypeError, ValueError):
        raise PreventUpdate
    l, h = urlstate.head_of(state)
    q0, q1, k0, k1 = zoom_window(cq, ck, res.n_tokens, service.zoom_span(res.n_tokens), res.causal)
    return {"a": state["a"], "head": [l, h], "q0": q0, "q1": q1, "k0": k0, "k1": k1}


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


@callback(Output(ids.ZOOM, "data"), Input(ids.ZOOM_JOB, "data"), prevent_initial_call=True)
def relay_zoom(data):
    """Background output -> the store the views read (see ids.ZOOM_JOB)."""
    return data


# ---------------------------------------------------------------- sinks, basin, entropy, graphs

@callback(Output(ids.SK_LAYERS, "figure"), Output(ids.SK_RATE, "figure"), Output(ids.SK_MAP, "figure"),
          Output(ids.SK_TABLE, "children"), Input(ids.STATE, "data"), Input(ids.SK_EPS, "value"))
def render_sinks(state, eps):
    if not active(state, "sinks"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        return sinks.empty()
    res, summ = got
    return sinks.render(res, summ, float(eps or 0.3), urlstate.head_of(state), service)


@callback(Output(ids.BS_SUMMARY, "children"), Output(ids.BS_TEXT, "children"), Output(ids.BS_CURVES, "figure"),
          Output(ids.BS_IMPORTANT, "options"), Output(ids.BS_ORDER, "children"),
          Input(ids.STATE, "data"), Input(ids.BS_IMPORTANT, "value"))
def render_basin(state, important):
    if not active(state, "basin"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        return PENDING, "", empty_figure(PENDING), [], ""
    return basin.render(got[0], list(important or []), service)


@callback(Output(ids.EN_MAP, "figure"), Output(ids.EN_PROFILE, "figure"), Output(ids.EN_FLAGS, "children"),
          Input(ids.STATE, "data"))
def render_entropy(state):
    if not active(state, "entropy"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        e = empty_figure(PENDING)
        return e, e, ""
    res, summ = got
    return entropy.render(res, summ, urlstate.head_of(state))


@callback(Output(ids.GR_HEADS, "figure"), Output(ids.GR_INFO, "children"), Output(ids.GR_TOKENS, "figure"),
          Input(ids.STATE, "data"), Input(ids.GR_THRESHOLD, "value"), Input(ids.ZOOM, "data"))
def render_graphs(state, threshold, zoom_store):
    if not active(state, "graphs"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        e = empty_figure(PENDING)
        return e, "", e
    res, summ = got
    sel = urlstate.head_of(state)
    fig, info = graphs.render_heads(res, sel)
    rows = head.head_rows(res, state["a"], sel[0], sel[1], service, _zoom(zoom_store))
    return fig, info, graphs.render_tokens(res, rows, summ, sel, float(threshold or 0.1), service)


# ---------------------------------------------------------------- variants

@callback(Output(ids.VR_MAPS, "figure"), Output(ids.VR_DIFF, "figure"), Output(ids.VR_BARS, "figure"),
          Output(ids.VR_TABLE, "children"), Output(ids.VR_NOTE, "children"),
          Input(ids.STATE, "data"), Input(ids.COMPARE, "data"))
def render_variants(state, compare_store):
    if not active(state, "variants"):
        raise PreventUpdate
    reason = service.variants_available()
    if reason:
        e = empty_figure(f"variants: not available yet ({reason})")
        return e, e, e, "", ""
    got = result_for(state)
    if not got:
        e = empty_figure(PENDING)
        return e, e, e, "", ""
    res, _ = got
    l, h = urlstate.head_of(state)
    cmp = None
    if compare_store and compare_store.get("a") == state["a"]:
        cmp = service.get_comparison(compare_store.get("ck"))
    return variants.render(res, cmp, service.head_map(state["a"], l, h), (l, h))


def compare_job(set_progress, n_clicks, specs, custom, layers_text, state):
    """Background: compare the chosen variants on the current analysis. Returns (store, error)."""
    try:
        got = result_for(state)
        if not got:
            raise UserError("no analysis to compare on yet")
        res, _ = got
        chosen = list(specs or [])
        if custom and custom.strip():
            chosen += service.split_specs(custom)
        try:
            layers = variants.parse_layers(layers_text, res.n_layers)
        except ValueError as exc:
            raise UserError(f"layers: {exc}") from None
        service.job_setup()
        ck = service.run_comparison(state["a"], chosen, layers, urlstate.head_of(state),
                                    progress=lambda f, m: set_progress((str(int(round(100 * f))), m)))
        return {"a": state["a"], "ck": ck, "t": time.time()}, ""
    except UserError as exc:
        return no_update, error_box(str(exc))
    except Exception as exc:
        log.exception("comparison failed")
        return no_update, error_box(f"internal error ({exc.__class__.__name__}: {exc})")


callback(Output(ids.COMPARE_JOB, "data"), Output(ids.VR_ERROR, "children"),
         Input(ids.VR_RUN, "n_clicks"), State(ids.VR_SPECS, "value"), State(ids.VR_CUSTOM, "value"),
         State(ids.VR_LAYERS, "value"), State(ids.STATE, "data"),
         background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
         progress=[Output(ids.VR_PROGRESS, "value"), Output(ids.VR_PROGRESS_MSG, "children")],
         running=[(Output(ids.VR_RUN, "disabled"), True, False), (Output(ids.VR_CANCEL, "disabled"), False, True),
                  (Output(ids.VR_PROGRESS_WRAP, "style"), {"display": "flex"}, {"display": "none"})],
         cancel=[Input(ids.VR_CANCEL, "n_clicks")])(compare_job)


@callback(Output(ids.COMPARE, "data"), Input(ids.COMPARE_JOB, "data"), prevent_initial_call=True)
def relay_compare(data):
    return data


# ---------------------------------------------------------------- generation

@callback(Output(ids.GN_TEXT, "children"), Output(ids.GN_MAP, "figure"), Output(ids.GN_TABLE, "children"),
          Input(ids.STATE, "data"))
def render_generate(state):
    if not active(state, "generate"):
        raise PreventUpdate
    got = result_for(state)
    if not got:
        return PENDING, empty_figure(PENDING), ""
    res, summ = got
    l, h = urlstate.head_of(state)
    return generate.render(res, service.head_map(state["a"], l, h), summ, (l, h), state["scale"])
