"""The shell's callbacks: routing, URL state, the analysis job, progress, cancel. Each view's own
callbacks live in its page module (visapp.pages.<view>).

Data flow (no cycles): the URL is the source of truth for the view state. `sync_state` merges URL
changes and the selections (the SELECT store: the pages' head/metric/scale, finished analyses via
`relay_done`) into the STATE store and writes the URL back. `route` fills the page container when the path changes (not on every query
change: a head click must not rebuild the page). `boot` (on page load) asks the analysis job to run
when the wanted analysis is not cached: the link's stored request, or says in one line why it
cannot. The analysis job is a background callback (visapp.state manager) and writes only small keys.

Every function here is a plain function too (tests call them without a browser).
"""
from __future__ import annotations

import logging
import time

import dash
from dash import Input, Output, State, callback, clientside_callback, ctx, no_update
from dash.exceptions import PreventUpdate

from compute.errors import UserError

from . import dataset_export_ui, export_ui, ids, pages, service, urlstate
from .components import error_box, notice
from .pages.common import NOT_STORED, current, selection, status
from .presets import PRESETS
from .state import background_manager
from .urlstate import VIEWS

log = logging.getLogger(__name__)
CANCELLED = "cancelled; the previous result is shown"
CANCELLED_NONE = "cancelled; there is no earlier result: press Analyze to start again"
PREPARING = "loading the model {model} (once per server start), then analysing…"


# ---------------------------------------------------------------- routing and state

@callback(Output(ids.PAGE, "children"), Input(ids.URL, "pathname"), State(ids.URL, "search"))
def route(pathname, search):
    """The page of the path (Dash pages registry), built with the URL's query values, plus its
    export block."""
    st = urlstate.parse(pathname, search)
    view = st["view"]
    page = dash.page_registry.get(pages.module(view).__name__) if dash.page_registry else None
    make = page["layout"] if page else pages.module(view).layout
    query = {k: st[k] for k in ("a", "model", "head", "metric", "scale") if st.get(k)}
    return [make(**query), *export_ui.controls_for(view), *dataset_export_ui.controls_for(view)]


@callback(
    Output(ids.URL, "search"), Output(ids.STATE, "data"),
    Input(ids.URL, "pathname"), Input(ids.URL, "search"), Input(ids.SELECT, "data"),
    State(ids.STATE, "data"),
)
def sync_state(pathname, search, select, prev=None):
    """URL + the latest selection (a page's head/metric/scale, or a finished analysis) -> STATE and
    the URL's query. No input here is a background job's output: the renderer holds a callback
    until the callbacks writing its inputs have answered, and the job answers when it is done."""
    trig = ctx.triggered_id
    st = urlstate.parse(pathname, search)
    if trig == ids.SELECT and isinstance(select, dict):
        done = select.get("done")
        if isinstance(done, str) and urlstate.parse("/", f"?a={done}")["a"] == done:
            st["a"], st["model"] = done, str(select.get("model") or "")
        if isinstance(select.get("head"), str) and urlstate.parse("/", f"?head={select['head']}")["head"] == select["head"]:
            st["head"] = select["head"]
        if isinstance(select.get("metric"), str) and select["metric"] in urlstate.METRICS:
            st["metric"] = select["metric"]
        if isinstance(select.get("scale"), str) and select["scale"] in urlstate.SCALES:
            st["scale"] = select["scale"]
    if not st["a"]:
        req = service.default_request()
        st["a"], st["model"] = req.key(), req.model
    a = current(st)
    if a:
        st["head"], st["model"] = a.state["head"], a.res.model
    new_search = urlstate.to_search(st)
    if trig == ids.URL and st == prev and new_search == (search or ""):
        raise PreventUpdate       # the echo of our own URL write: the pages have drawn this state already
    return (new_search if new_search != (search or "") else no_update), st


@callback(*[Output(ids.nav(v), "href") for v in VIEWS], *[Output(ids.nav(v), "className") for v in VIEWS],
          Input(ids.STATE, "data"))
def navigation(state):
    st = state or dict(urlstate.DEFAULTS)
    q = urlstate.to_search(st)
    hrefs = [f"/{v}{q}" for v in VIEWS]
    classes = ["tab tab-active" if st.get("view") == v else "tab" for v in VIEWS]
    return (*hrefs, *classes)


@callback(Output(ids.LOAD_REQ, "data"), Output(ids.NOTICE, "children", allow_duplicate=True),
          Input(ids.URL, "pathname"), State(ids.URL, "search"), State(ids.LOAD_REQ, "data"),
          prevent_initial_call="initial_duplicate")
def boot(pathname, search, asked):
    """Ask for the link's analysis when it is not cached: re-run its stored request (the key is the
    request's hash, so the link stays valid), or the default example; a key whose request is stored
    nowhere gets a one-line notice instead. Runs once per analysis, not on every page switch."""
    st = urlstate.parse(pathname, search)
    default = service.default_request()
    key = st["a"] or default.key()
    if service.is_cached(key):
        raise PreventUpdate
    req = service.get_request(key) if st["a"] else default
    if req is None:
        return no_update, notice(NOT_STORED, "warn")
    if asked and (asked.get("request") or {}) == req.to_dict():
        raise PreventUpdate                      # already asked (a page switch while it runs)
    return {"request": req.to_dict(), "t": time.time()}, notice(PREPARING.format(model=req.model))


@callback(Output(ids.AUTORUN, "data"), Output(ids.NOTICE, "children", allow_duplicate=True),
          Input(ids.LOAD_REQ, "data"), prevent_initial_call=True)
def load_then_ask(load_req):
    """Load the model in this (web) process, then ask the job to run: the job forks from here and
    must not fork while a load or an import is half done (see visapp.service.warm_up)."""
    if not isinstance(load_req, dict) or not isinstance(load_req.get("request"), dict):
        raise PreventUpdate
    service.warm_up(str(load_req["request"].get("model") or service.DEFAULT_MODEL), wait=True)
    return {"request": load_req["request"], "t": time.time()}, ""


@callback(Output(ids.RUN_INFO, "children"), Input(ids.STATE, "data"))
def run_info(state):
    a = current(state)
    if a is None:
        return status(state)
    res = a.res
    bits = [res.model, f"{res.n_tokens} tokens", f"{res.n_layers}×{res.n_heads} heads", f"backend {res.backend}",
            f"{res.timings.get('total_s', 0):.1f} s"]
    if res.loss is not None:
        bits.append(f"loss {res.loss:.3f}")
    if res.extras.get("generation"):
        bits.append(f"+{res.extras['generation']['new_tokens']} generated")
    return " · ".join(bits)


PANEL = (ids.TEXT, ids.MODEL, ids.MODEL_PATH, ids.BACKEND, ids.MAX_TOKENS, ids.SINK_TOKENS, ids.ITEMS, ids.PROBES,
         ids.IMPORTANCE)


def panel_values(req: service.Request) -> tuple:
    """The input panel's values (PANEL order) showing a request."""
    registry = {m["name"] for m in service.list_models()}
    model, path = (req.model, "") if req.model in registry else (no_update, req.model)
    return (req.text, model, path, req.backend, req.max_tokens, req.sink_tokens, req.items, list(req.probes),
            ["on"] if req.importance else [])


@callback(
    *[Output(c, "value") for c in PANEL], Output(ids.FILLED, "data"),
    Input(ids.STATE, "data"), *[Input(ids.preset(p), "n_clicks") for p in PRESETS],
    State(ids.PROBES, "value"), State(ids.FILLED, "data"),
    prevent_initial_call=True,
)
def fill_panel(state, *rest):
    """Show the inputs of the analysis on screen (once per analysis), or load a preset: its text,
    items, and the probes it is made for (added to the ticked ones)."""
    probes, filled = rest[-2], rest[-1]
    trig = ctx.triggered_id
    keep = [no_update] * (len(PANEL) + 1)
    if isinstance(trig, str) and trig.startswith(ids.PRESET_PREFIX):
        p = PRESETS[trig[len(ids.PRESET_PREFIX):]]
        keep[0], keep[6] = p["text"], p["items"]
        if p.get("probes"):
            keep[7] = sorted(set(probes or []) | set(p["probes"]))
        return tuple(keep)
    key = (state or {}).get("a")
    if not key or key == filled:
        raise PreventUpdate
    req = service.get_request(key)
    if req is None:
        raise PreventUpdate
    return (*panel_values(req), key)


# ---------------------------------------------------------------- the analysis job

def analysis_job(set_progress, n_analyze, gen_req, autorun, model, path, text, backend, max_tokens,
                 sink_tokens, items, probes, importance, trigger=None):
    """Runs in a background process: validate, analyse (or generate + analyse), cache. Returns
    (done store, error box)."""
    trig = trigger or ctx.triggered_id
    try:
        if trig == ids.AUTORUN:
            if not autorun:
                return no_update, no_update
            if autorun.get("done"):
                return {"key": autorun["done"], "model": autorun.get("model", ""), "t": time.time()}, ""
            d = autorun.get("request")           # browser-sent: validated like the input panel's values
            if not isinstance(d, dict):
                raise UserError("the page sent a malformed request; reload it")
            req = service.make_request(**{k: d[k] for k in service.Request.__dataclass_fields__ if k in d})
        else:
            gen = (gen_req or {}).get("tokens") if trig == ids.GEN_REQ else 0
            req = service.make_request(
                model=(path or "").strip() or model, text=text, backend=backend, max_tokens=max_tokens,
                sink_tokens=sink_tokens, items=items, probes=probes or (), importance=bool(importance),
                generate=gen if gen is not None else 0)
        service.job_setup()
        key = service.run_analysis(req, progress=lambda f, m: set_progress((str(int(round(100 * f))), m)))
        return {"key": key, "model": req.model, "t": time.time()}, ""
    except UserError as exc:
        return no_update, error_box(str(exc))
    except MemoryError:
        return no_update, error_box("out of memory: try a shorter text or fewer max tokens")
    except Exception as exc:  # never a traceback in the page
        log.exception("analysis failed")
        return no_update, error_box(f"internal error ({exc.__class__.__name__}: {exc})")


callback(
    Output(ids.DONE, "data"), Output(ids.ERROR, "children"),
    Input(ids.ANALYZE, "n_clicks"), Input(ids.GEN_REQ, "data"), Input(ids.AUTORUN, "data"),
    State(ids.MODEL, "value"), State(ids.MODEL_PATH, "value"), State(ids.TEXT, "value"),
    State(ids.BACKEND, "value"), State(ids.MAX_TOKENS, "value"), State(ids.SINK_TOKENS, "value"),
    State(ids.ITEMS, "value"), State(ids.PROBES, "value"), State(ids.IMPORTANCE, "value"),
    background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
    progress=[Output(ids.PROGRESS, "value"), Output(ids.PROGRESS_MSG, "children")],
    running=[(Output(ids.ANALYZE, "disabled"), True, False), (Output(ids.CANCEL, "disabled"), False, True),
             (Output(ids.PROGRESS_WRAP, "style"), {"display": "block"}, {"display": "none"})],
    cancel=[Input(ids.CANCEL, "n_clicks")],
)(analysis_job)

# A new run starts from a clean progress line (never the last run's "done" or "layer 4/30") and clears
# the last notice; runs in the browser, so it shows before the job's first progress report.
clientside_callback(
    """function(a, g, r) {
        return ["0", "starting… (the first analysis after a start loads the model)", ""];
    }""",
    Output(ids.PROGRESS, "value", allow_duplicate=True), Output(ids.PROGRESS_MSG, "children", allow_duplicate=True),
    Output(ids.NOTICE, "children", allow_duplicate=True),
    Input(ids.ANALYZE, "n_clicks"), Input(ids.GEN_REQ, "data"), Input(ids.AUTORUN, "data"),
    prevent_initial_call=True,
)


@callback(Output(ids.NOTICE, "children", allow_duplicate=True), Output(ids.TEXT, "value", allow_duplicate=True),
          Input(ids.CANCEL, "n_clicks"), State(ids.STATE, "data"), prevent_initial_call=True)
def cancelled(n_clicks, state):
    """Cancel: say so, and put the shown result's text back into the panel (not the abandoned one)."""
    if not n_clicks:
        raise PreventUpdate
    req = service.get_request(state["a"]) if current(state) else None
    if req is None:
        return notice(CANCELLED_NONE, "warn"), no_update
    return notice(CANCELLED, "warn"), req.text


# ---------------------------------------------------------------- relays (see ids.ZOOM_JOB)

@callback(Output(ids.SELECT, "data", allow_duplicate=True), Input(ids.DONE, "data"), prevent_initial_call=True)
def relay_done(done):
    """A finished analysis -> a selection of its key (sync_state must not wait on the job, see there)."""
    if not isinstance(done, dict) or not done.get("key"):
        raise PreventUpdate
    return selection(done=done["key"], model=done.get("model", ""))


@callback(Output(ids.ZOOM, "data"), Input(ids.ZOOM_JOB, "data"), prevent_initial_call=True)
def relay_zoom(data):
    """Background output -> the store the views read."""
    return data


@callback(Output(ids.COMPARE, "data"), Input(ids.COMPARE_JOB, "data"), prevent_initial_call=True)
def relay_compare(data):
    return data
