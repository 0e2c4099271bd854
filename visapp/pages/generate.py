"""Generated continuation: generate N tokens after the text, analyse prompt + continuation, then inspect
how the generated tokens attend (BertViz users' 'how do I visualise the generated tokens?')."""
from __future__ import annotations

import time

import numpy as np
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from .. import ids, service
from ..components import controls, graph, labelled, notice, plain_token, section, table
from ..figures import attention_heatmap, empty_figure, pooled_heatmap, token_labels
from ..templates import SCREEN
from .common import Analysis, current, on_analysis

EXPORT_CONTROLS = ()


def layout(**query) -> html.Div:
    return html.Div([
        section("Generate a continuation",
                controls(labelled("Tokens to generate", dcc.Input(id=ids.GN_TOKENS, type="number", min=1, max=256,
                                                                  step=1, value=24, style={"width": "80px"})),
                         html.Button("Generate and analyse", id=ids.GN_RUN, className="btn")),
                html.Div(id=ids.GN_TEXT, className="gen-text"),
                html.Button("Use prompt + continuation as the text", id=ids.GN_USE,
                            className="btn btn-small btn-secondary", n_clicks=0),
                help_text="Greedy decoding from the text in the input panel (uses the model and options "
                          "there); the prompt and its continuation are then analysed together, and every view "
                          "shows that analysis. The input panel keeps your prompt; the button above puts the "
                          "continuation after it."),
        section("Attention of the generated tokens", graph(ids.GN_MAP, 420), html.Div(id=ids.GN_TABLE),
                help_text="Rows: generated tokens (queries); columns: every earlier token (keys)."),
    ], id=ids.view("generate"), className="view")


def render(res, full, summ: dict, selected, scale: str, template: str = SCREEN):
    """(text block, heatmap of the generated rows, per-token table)."""
    gen = res.extras.get("generation")
    if not gen:
        return (notice("The current analysis has no generated continuation: press 'Generate and analyse'."),
                empty_figure("no generated tokens", template), "")
    l, h = selected
    p = min(int(gen["prompt_tokens"]), res.n_tokens - 1)
    text = html.Div([html.P([html.B("prompt: "), html.Span("".join(res.tokens[:p]), className="prompt")],
                            className="mono-wrap"),
                     html.P([html.B(f"continuation ({res.n_tokens - p} tokens): "),
                             html.Span("".join(res.tokens[p:]), className="generated")], className="mono-wrap")])
    if full is not None:
        fig = attention_heatmap(full[p:], token_labels(res.tokens, p), token_labels(res.tokens), causal=res.causal,
                                scale=scale, q_start=p, title=f"layer {l} head {h}: generated tokens {p}–"
                                                              f"{res.n_tokens - 1}", template=template)
    else:
        fig = pooled_heatmap(res.pooled_max[l, h], res.pool, res.n_tokens, causal=res.causal, template=template,
                             title=f"layer {l} head {h} (pooled: long text)")
    top1 = res.top1_idx[l, h]
    beyond = _strongest_beyond_sink(full, p) if full is not None else None
    rows = []
    for i in range(p, res.n_tokens):
        j = int(top1[i])
        row = [i, plain_token(res.tokens[i]), f"{plain_token(res.tokens[j])} ({j})", float(res.top1_prob[l, h, i])]
        if beyond is not None:
            k, w = beyond[i - p]
            row += [f"{plain_token(res.tokens[k])} ({k})" if k >= 0 else "", w]
        rows.append(row + [float(res.sink0[l, h, i]), float(np.nan_to_num(summ["entropy_norm"][l, h, i]))])
    cols = ["pos", "generated token", "strongest key", "its weight"]
    if beyond is not None:
        cols += ["strongest key after token 0", "its weight"]
    tbl = table(cols + ["mass on token 0", "norm. entropy"], rows[:200])
    return text, fig, tbl


def _strongest_beyond_sink(full: np.ndarray, p: int) -> list[tuple[int, float]]:
    """Each generated query's strongest key other than token 0 (token 0 is the sink in most heads,
    which hides what the query reads): (key, weight), (-1, 0.0) when only token 0 is visible."""
    rows = np.nan_to_num(np.asarray(full[p:], float))
    if rows.shape[1] < 2:
        return [(-1, 0.0)] * rows.shape[0]
    j = rows[:, 1:].argmax(1) + 1
    return [(int(k), float(rows[r, k])) for r, k in enumerate(j)]


def continuation_text(res) -> str:
    """Prompt + continuation exactly as analysed (for the 'use as the text' button)."""
    return res.text


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.GN_TEXT, "children"), Output(ids.GN_MAP, "figure"), Output(ids.GN_TABLE, "children"),
          Input(ids.STATE, "data"))
@on_analysis("generate", lambda msg: (msg, empty_figure(msg), ""))
def render_generate(a: Analysis):
    l, h = a.head
    return render(a.res, service.head_map(a.key, l, h), a.summ, (l, h), a.state["scale"])


@callback(Output(ids.GEN_REQ, "data"), Input(ids.GN_RUN, "n_clicks"), State(ids.GN_TOKENS, "value"),
          prevent_initial_call=True)
def ask_generate(n_clicks, tokens):
    """The analysis job (in the shell) generates: it reads the panel's inputs and this request."""
    if not n_clicks:
        raise PreventUpdate
    return {"tokens": tokens, "t": time.time()}


@callback(Output(ids.TEXT, "value", allow_duplicate=True), Input(ids.GN_USE, "n_clicks"), State(ids.STATE, "data"),
          prevent_initial_call=True)
def use_continuation(n_clicks, state):
    a = current(state)
    if not n_clicks or a is None or not a.res.extras.get("generation"):
        raise PreventUpdate
    return continuation_text(a.res)
