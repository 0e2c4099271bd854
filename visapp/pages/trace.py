"""Trace a token: for one query position P of the analysed text, attention rollout and flow (token bars and
the layer-by-token graph), the logit lens, each head's direct contribution to the predicted logit, and the
neuron view of the selected head and a chosen key; all from one forward (compute.tracing), run as a
background job and cached per (analysis, position) by visapp.trace_jobs."""
from __future__ import annotations

import logging
import time
from typing import Optional, Union

from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from compute.errors import UserError

from .. import ids, service, trace_jobs
from ..components import controls, error_box, graph, labelled, notice, plain_token, section
from ..figures import empty_figure
from ..figures.tracing import (MAX_BAR_TOKENS, MAX_GRAPH_TOKENS, contributions_map, layer_token_graph,
                               logit_lens_figure, neuron_bars, rollout_bars)
from ..state import background_manager
from ..templates import SCREEN
from .common import Analysis, current, on_analysis, select_head_on_click

log = logging.getLogger(__name__)
EXPORT_CONTROLS = (("trace", ids.TRACE, "data"), ("trace_key", ids.TR_KEY, "value"))
STRIP_TOKENS = 160            # token buttons shown around the position (the number box reaches any position)
CLI = "python -m compute trace --model M --text-file F --position P --out DIR"


def _limits() -> tuple[int, int]:
    from compute.tracing.flow import FLOW_MAX_TOKENS
    from compute.tracing.forward import DENSE_MAX_TOKENS
    return FLOW_MAX_TOKENS, DENSE_MAX_TOKENS


def help_text() -> str:
    flow_max, dense_max = _limits()
    return (f"Pick the query position P (empty = the last token; click a token). One forward of the text traces "
            f"it; the result is cached per position. Rollout covers up to {dense_max} tokens; attention flow runs "
            f"one max-flow per token, so it is computed up to {flow_max} tokens (its cost grows with the cube of "
            f"the length) and the page says when it is left out. Headless, with the same numbers: {CLI} "
            "(docs/tracing.md).")


def layout(**query) -> html.Div:
    return html.Div([
        section("Trace a token",
                controls(labelled("Position P", dcc.Input(id=ids.TR_POSITION, type="number", min=0, step=1,
                                                          placeholder="last token", debounce=True,
                                                          style={"width": "110px"})),
                         html.Button("Trace", id=ids.TR_RUN, className="btn", n_clicks=0),
                         html.Button("Cancel", id=ids.TR_CANCEL, className="btn btn-secondary", disabled=True)),
                html.Div(id=ids.TR_TOKENS, className="token-strip"),
                html.Div([html.Progress(id=ids.TR_PROGRESS, max="100", value="0"),
                          html.Span(id=ids.TR_PROGRESS_MSG, className="progress-msg")], className="progress-row",
                         id=ids.TR_PROGRESS_WRAP, style={"display": "none"}),
                html.Div(id=ids.TR_ERROR, role="alert"), html.Div(id=ids.TR_JOB_ERROR, role="alert"),
                html.Div(id=ids.TR_SUMMARY), dcc.Store(id=ids.TR_REQ),
                # page stores: a callback with an output in the shell would need these inputs on every page
                dcc.Store(id=ids.TRACE),
                help_text=help_text()),
        section("Rollout and flow", graph(ids.TR_ROLLOUT, 460),
                help_text="What P draws on from each input token: attention rollout (head-mean maps mixed with the "
                          "residual, multiplied through the layers) and attention flow (max-flow through the layer "
                          "graph). Heuristics about how attention mixes tokens, not gradient attributions."),
        section("Rollout through the layers", graph(ids.TR_GRAPH, 560),
                help_text="Node (layer, token): the share of P's rollout that passes through that token after that "
                          "layer; edges: the strongest attention links."),
        section("Logit lens", graph(ids.TR_LENS, 560),
                help_text="The top tokens after each layer (the residual at P through the final norm and "
                          "unembedding) and the rank of the actual next token."),
        section("Head contributions", graph(ids.TR_CONTRIB, 560),
                help_text="Each head's direct contribution to the logit of the predicted token; the heads plus the "
                          "rest (embeddings, MLPs, biases) sum to the logit. Click a head to select it (the neuron "
                          "view below follows); the overview's 'size by importance' uses |contribution| when the "
                          "analysis has no importance."),
        section("Neuron view of the selected head",
                controls(labelled("Key position", dcc.Input(id=ids.TR_KEY, type="number", min=0, step=1,
                                                             placeholder="strongest key", debounce=True,
                                                             style={"width": "120px"}))),
                graph(ids.TR_NEURON, 580),
                help_text="q at P and k at the key, per dimension, as the attention function gets them (after RoPE) "
                          "and before the rotation; their elementwise product sums to the dot product, times the "
                          "scale gives the logit, and the softmax over the keys P sees gives the attention weight. "
                          "GQA: the key head the query head reads."),
    ], id=ids.view("trace"), className="view")


# ---------------------------------------------------------------- pure parts

def window(n: int, position: int, limit: int) -> Optional[tuple[int, int]]:
    """Tokens [a, b) a figure drawing at most `limit` tokens shows: all, or `limit` around P (ending at P for
    causal models, whose scores stop at P)."""
    if n <= limit:
        return None
    a = min(max(0, position - limit // 2), n - limit)
    return a, a + limit


def render(res, tr: Optional[dict], nv: Union[dict, str, None], selected, template: str = SCREEN):
    """(rollout bars, layer-by-token graph, logit lens, contributions map, neuron bars) of one trace."""
    if tr is None:
        e = empty_figure("pick a position: its trace runs in the background", template)
        return e, e, e, e, e
    toks, P, omitted = tr["tokens"], tr["position"], tr.get("omitted") or {}
    if tr.get("rollout") is not None:
        n = len(tr["rollout"])
        f_bars = rollout_bars(toks, tr["rollout"], tr.get("flow"), position=P, flow_note=omitted.get("flow", ""),
                              log=bool(res.causal), window=window(n, P, MAX_BAR_TOKENS), template=template)
        f_graph = layer_token_graph(toks, tr["rollout_by_layer"], tr["rollout_edges"], position=P,
                                    window=window(n, P, MAX_GRAPH_TOKENS), template=template)
    else:
        f_bars = f_graph = empty_figure(f"rollout and flow: not available ({omitted.get('rollout', 'not computed')})",
                                        template)
    if tr.get("logit_lens"):
        nxt = (tr.get("next_token") or {}).get("token")
        f_lens = logit_lens_figure(tr["logit_lens"], next_token=nxt, template=template)
    else:
        f_lens = empty_figure(f"logit lens: not available ({omitted.get('logit_lens', 'not computed')})", template)
    if tr.get("contributions") is not None:
        f_contrib = contributions_map(tr["contributions"], rest=tr["contribution_rest"],
                                      target=tr["contribution_target"]["token"], logit=tr["prediction"]["logit"],
                                      selected=tuple(selected), template=template)
    else:
        f_contrib = empty_figure(f"head contributions: not available "
                                 f"({omitted.get('contributions', 'not computed')})", template)
    if isinstance(nv, dict):
        f_neuron = neuron_bars(nv, template=template)
    else:
        f_neuron = empty_figure(f"neuron view: {nv or 'not available'}", template)
    return f_bars, f_graph, f_lens, f_contrib, f_neuron


def summary(tr: dict) -> html.Div:
    """One line on what was traced and predicted, plus one per omitted section."""
    P, toks = tr["position"], tr["tokens"]
    bits = [f"position {P} ({plain_token(toks[P])}) of {len(toks)} tokens"]
    pred = tr.get("prediction")
    if pred:
        bits.append(f"predicts {plain_token(pred['token'])} (p = {pred['prob']:.3f}, logit {pred['logit']:.2f})")
    nxt = tr.get("next_token")
    if nxt and tr.get("logit_lens"):
        last = tr["logit_lens"][-1]
        bits.append(f"next token {plain_token(nxt['token'])}: rank {last.get('next_token_rank')} "
                    f"(p = {last.get('next_token_prob', 0):.3g})")
    t = (tr.get("timings") or {}).get("total_s")
    if t is not None:
        bits.append(f"traced in {t:.1f} s")
    lines = [html.P(" · ".join(bits), className="help")]
    lines += [notice(f"{name.replace('_', ' ')} left out: {why}") for name, why in (tr.get("omitted") or {}).items()]
    return html.Div(lines)


def trace_of(key: str, store: Optional[dict]) -> tuple[Optional[dict], Optional[str]]:
    """(trace, tk) the TRACE store points at for analysis `key`; the store is checked (a forged or stale store
    reads as no trace, never as another cache entry)."""
    if not isinstance(store, dict) or store.get("a") != key:
        return None, None
    try:
        tk = trace_jobs.trace_key(key, int(store.get("position")))
    except (TypeError, ValueError):
        return None, None
    if store.get("tk") != tk:
        return None, None
    return trace_jobs.get_trace(tk), tk


def neuron_of(tk: Optional[str], selected, key_value) -> Union[dict, str]:
    """The neuron view dict, or the one-line reason it is not shown."""
    if tk is None:
        return "trace a position first"
    try:
        return trace_jobs.neuron(tk, selected[0], selected[1], key_value)
    except UserError as exc:
        return str(exc)


def export_trace(key: str, controls_: Optional[dict], selected) -> tuple[Optional[dict], Union[dict, str]]:
    """(trace, neuron) for the export: the page's trace store, else the analysis' latest trace."""
    c = controls_ or {}
    tr, tk = trace_of(key, c.get("trace"))
    if tr is None:
        tk = trace_jobs.latest(key)
        tr = trace_jobs.get_trace(tk)
    return tr, (neuron_of(tk, selected, c.get("trace_key")) if tr is not None else "no trace")


def token_strip(res, position: Optional[int]) -> html.Div:
    n = res.n_tokens
    P = n - 1 if position is None else position
    a = min(max(0, P - STRIP_TOKENS // 2), max(0, n - STRIP_TOKENS))
    b = min(n, a + STRIP_TOKENS)
    spans = [html.Button(plain_token(res.tokens[i]) or "∅", id={"type": ids.TR_TOKEN_PREFIX, "index": i},
                         title=f"position {i}", n_clicks=0,
                         className="tok tok-picked" if i == P else "tok") for i in range(a, b)]
    more = [html.Span(f" … tokens {a}–{b - 1} of {n} shown; type a position to reach the others", className="help")] \
        if (a, b) != (0, n) else []
    return html.Div(spans + more)


# ---------------------------------------------------------------- callbacks

def _position(a: Analysis, value) -> Optional[int]:
    try:
        return trace_jobs.parse_position(value, a.res.n_tokens)
    except UserError:
        return None


@callback(Output(ids.TR_TOKENS, "children"), Input(ids.STATE, "data"), Input(ids.TR_POSITION, "value"))
@on_analysis("trace", lambda msg: notice(msg))
def render_strip(a: Analysis, value):
    return token_strip(a.res, _position(a, value))


@callback(Output(ids.TR_POSITION, "value"), Input({"type": ids.TR_TOKEN_PREFIX, "index": ALL}, "n_clicks"),
          prevent_initial_call=True)
def pick_token(clicks):
    """A click on a token of the strip picks it (a redrawn strip, all n_clicks 0, picks nothing)."""
    trig = ctx.triggered_id
    if not isinstance(trig, dict) or not any(t.get("value") for t in ctx.triggered):
        raise PreventUpdate
    return int(trig["index"])


def want_trace(state, value, n_run, prev_req, shown, trigger=None):
    """The trace the page needs: (job request, error line, TRACE store). Cached -> shown at once; not cached ->
    the background job is asked (once per (analysis, position), again on Trace)."""
    if not state or state.get("view") != "trace":
        raise PreventUpdate
    a = current(state)
    if a is None:
        raise PreventUpdate
    try:
        P = trace_jobs.parse_position(value, a.res.n_tokens)
    except UserError as exc:
        return no_update, error_box(str(exc)), no_update
    if trace_jobs.is_traced(a.key, P):
        store = {"a": a.key, "position": P, "tk": trace_jobs.trace_key(a.key, P)}
        same = isinstance(shown, dict) and {k: shown.get(k) for k in store} == store
        return no_update, "", (no_update if same else dict(store, t=time.time()))
    asked = isinstance(prev_req, dict) and prev_req.get("a") == a.key and prev_req.get("position") == P
    if asked and (trigger or ctx.triggered_id) != ids.TR_RUN:
        return no_update, "", no_update
    return {"a": a.key, "position": P, "t": time.time()}, "", no_update


callback(Output(ids.TR_REQ, "data"), Output(ids.TR_ERROR, "children"),
         Output(ids.TRACE, "data", allow_duplicate=True),
         Input(ids.STATE, "data"), Input(ids.TR_POSITION, "value"), Input(ids.TR_RUN, "n_clicks"),
         State(ids.TR_REQ, "data"), State(ids.TRACE, "data"), prevent_initial_call="initial_duplicate")(want_trace)


def trace_job(set_progress, req):
    """Background: trace the requested position. Returns (TRACE_JOB store, error box)."""
    try:
        if not isinstance(req, dict) or not isinstance(req.get("a"), str):
            raise UserError("no position to trace")
        service.job_setup()
        tk = trace_jobs.run_trace(req["a"], req.get("position"),
                                  progress=lambda f, m: set_progress((str(int(round(100 * f))), m)))
        tr = trace_jobs.get_trace(tk)
        return {"a": req["a"], "position": tr["position"], "tk": tk, "t": time.time()}, ""
    except UserError as exc:
        return no_update, error_box(str(exc))
    except MemoryError:
        return no_update, error_box("out of memory: trace a shorter text")
    except Exception as exc:  # never a traceback in the page
        log.exception("trace failed")
        return no_update, error_box(f"internal error ({exc.__class__.__name__}: {exc})")


callback(Output(ids.TRACE_JOB, "data"), Output(ids.TR_JOB_ERROR, "children"), Input(ids.TR_REQ, "data"),
         background=True, manager=background_manager(), interval=500, prevent_initial_call=True,
         progress=[Output(ids.TR_PROGRESS, "value"), Output(ids.TR_PROGRESS_MSG, "children")],
         running=[(Output(ids.TR_RUN, "disabled"), True, False), (Output(ids.TR_CANCEL, "disabled"), False, True),
                  (Output(ids.TR_PROGRESS_WRAP, "style"), {"display": "flex"}, {"display": "none"})],
         cancel=[Input(ids.TR_CANCEL, "n_clicks")])(trace_job)


@callback(Output(ids.TRACE, "data", allow_duplicate=True), Input(ids.TRACE_JOB, "data"), prevent_initial_call=True)
def relay_trace(data):
    """Background output -> the store the page and its export read (see ids.ZOOM_JOB)."""
    return data


def _placeholder(msg: str):
    e = empty_figure(msg)
    return "", e, e, e, e, e


@callback(Output(ids.TR_SUMMARY, "children"), Output(ids.TR_ROLLOUT, "figure"), Output(ids.TR_GRAPH, "figure"),
          Output(ids.TR_LENS, "figure"), Output(ids.TR_CONTRIB, "figure"), Output(ids.TR_NEURON, "figure"),
          Input(ids.STATE, "data"), Input(ids.TRACE, "data"), Input(ids.TR_KEY, "value"))
@on_analysis("trace", _placeholder)
def render_trace(a: Analysis, store, key_value):
    tr, tk = trace_of(a.key, store)
    if tr is None:
        if tk is not None:
            why = notice("this trace is no longer cached: press Trace to run it again", "warn")
        elif isinstance(store, dict) and store.get("a") == a.key:
            why = error_box("the trace store does not match this analysis; pick the position again")
        else:
            why = ""                  # nothing traced yet, or the store of the previous analysis
        return (why, *render(a.res, None, None, a.head))
    return (summary(tr), *render(a.res, tr, neuron_of(tk, a.head, key_value), a.head))


select_head_on_click(ids.TR_CONTRIB)
