"""The shell around the pages: header, input panel, navigation, the shared stores, and the page
container the router (visapp.callbacks.route) fills with the shown view (visapp.pages.<view>)."""
from __future__ import annotations

from dash import dcc, html

from . import ids, service
from .presets import PRESETS
from .urlstate import VIEW_TITLES, VIEWS

STARTING = "starting: the analysis begins as soon as the model is loaded…"


def input_panel() -> html.Aside:
    models = service.list_models()
    req = service.default_request()
    return html.Aside([
        html.H2("Input"),
        html.Label("Model", htmlFor=ids.MODEL),
        dcc.Dropdown(id=ids.MODEL, clearable=False, value=req.model,
                     options=[{"label": f"{m['name']} ({m['kind']})" + ("" if m["installed"] else " — missing"),
                               "value": m["name"], "disabled": not m["installed"]} for m in models]),
        dcc.Input(id=ids.MODEL_PATH, type="text", debounce=True, className="path-input",
                  placeholder="or a local model folder / .gguf path"),
        html.Label("Text", htmlFor=ids.TEXT),
        dcc.Textarea(id=ids.TEXT, value=req.text, className="text-input", spellCheck=False),
        html.Div([html.Button(p["label"], id=ids.preset(name), className="btn btn-small btn-secondary",
                              n_clicks=0) for name, p in PRESETS.items()], className="presets"),
        html.Details([
            html.Summary("Options"),
            html.Label("Backend"),
            dcc.RadioItems(id=ids.BACKEND, value=req.backend, inline=True,
                           options=[{"label": b, "value": b} for b in service.BACKENDS]),
            html.Label("Max tokens"),
            dcc.Input(id=ids.MAX_TOKENS, type="number", min=1, step=1, value=req.max_tokens),
            html.Label("Sink count S (first S tokens)"),
            dcc.Input(id=ids.SINK_TOKENS, type="number", min=1, max=64, step=1, value=req.sink_tokens),
            html.Label("Items (basin)"),
            dcc.RadioItems(id=ids.ITEMS, value=req.items, inline=True,
                           options=[{"label": "auto", "value": "auto"}, {"label": "none", "value": "none"}]),
            html.Label("Probes (head roles)"),
            dcc.Checklist(id=ids.PROBES, value=list(req.probes), inline=True,
                          options=[{"label": p, "value": p} for p in service.PROBES]),
            dcc.Checklist(id=ids.IMPORTANCE, value=[], inline=True,
                          options=[{"label": "head importance (gradients)", "value": "on"}]),
        ], className="options"),
        html.Div([html.Button("Analyze", id=ids.ANALYZE, className="btn", n_clicks=0),
                  html.Button("Cancel", id=ids.CANCEL, className="btn btn-secondary", disabled=True)],
                 className="buttons"),
        html.Div([html.Progress(id=ids.PROGRESS, max="100", value="0"),
                  html.Div(id=ids.PROGRESS_MSG, className="progress-msg")], id=ids.PROGRESS_WRAP,
                 style={"display": "none"}),
        html.Div(id=ids.ERROR, role="alert", className="error-box"),
        html.Div(id=ids.NOTICE, role="status", className="notice-box"),
    ], className="panel")


def nav() -> html.Nav:
    return html.Nav([dcc.Link(VIEW_TITLES[v], id=ids.nav(v), href=f"/{v}", className="tab") for v in VIEWS],
                    className="tabs")


def serve_layout() -> html.Div:
    """A function (not a value) so every page load gets fresh model choices; builds no figures and
    loads no model, so the status line shows at once."""
    return html.Div([
        dcc.Location(id=ids.URL, refresh="callback-nav"),
        dcc.Store(id=ids.STATE), dcc.Store(id=ids.DONE), dcc.Store(id=ids.AUTORUN), dcc.Store(id=ids.LOAD_REQ),
        dcc.Store(id=ids.FILLED),
        dcc.Store(id=ids.ZOOM), dcc.Store(id=ids.ZOOM_REQ), dcc.Store(id=ids.COMPARE),
        dcc.Store(id=ids.ZOOM_JOB), dcc.Store(id=ids.COMPARE_JOB), dcc.Store(id=ids.SELECT),
        dcc.Store(id=ids.GEN_REQ),
        dcc.Store(id=ids.TRACE_JOB),
        # corpus / embedding / search / side by side results (kept across page switches)
        dcc.Store(id=ids.CP_RESULT), dcc.Store(id=ids.CP_JOB), dcc.Store(id=ids.EM_STORE), dcc.Store(id=ids.EM_JOB),
        dcc.Store(id=ids.CS_STORE), dcc.Store(id=ids.CS_JOB), dcc.Store(id=ids.SB_STORE), dcc.Store(id=ids.SB_JOB),
        dcc.Store(id=ids.CP_CORPUS),
        html.Header([html.H1("attnvis"), html.Span("attention in transformers, head by head", className="tagline"),
                     html.Div(STARTING, id=ids.RUN_INFO, className="run-info", role="status")]),
        html.Div([
            input_panel(),
            html.Main([nav(), html.Div(html.P(STARTING, className="help"), id=ids.PAGE)], className="main"),
        ], className="body"),
    ])
