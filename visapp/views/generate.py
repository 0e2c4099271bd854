"""Generated continuation: generate N tokens after the text, analyse prompt + continuation, then inspect
how the generated tokens attend (BertViz users' 'how do I visualise the generated tokens?')."""
from __future__ import annotations

import numpy as np
from dash import dcc, html

from .. import ids
from ..figures import attention_heatmap, empty_figure, pooled_heatmap, show_token, token_labels
from ..templates import SCREEN
from .common import controls, graph, labelled, notice, section, table


def layout() -> html.Div:
    return html.Div([
        section("Generate a continuation",
                controls(labelled("Tokens to generate", dcc.Input(id=ids.GN_TOKENS, type="number", min=1, max=256,
                                                                  step=1, value=24, style={"width": "80px"})),
                         html.Button("Generate and analyse", id=ids.GN_RUN, className="btn")),
                html.Div(id=ids.GN_TEXT, className="gen-text"),
                help_text="Greedy decoding from the text in the input panel (uses the model and options "
                          "there); the prompt and its continuation are then analysed together, and every view "
                          "shows that analysis."),
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
    text = html.P([html.Span("".join(res.tokens[:p]), className="prompt"),
                   html.Span("".join(res.tokens[p:]), className="generated")], className="mono-wrap")
    if full is not None:
        fig = attention_heatmap(full[p:], token_labels(res.tokens, p), token_labels(res.tokens), causal=res.causal,
                                scale=scale, q_start=p, title=f"layer {l} head {h}: generated tokens {p}–"
                                                              f"{res.n_tokens - 1}", template=template)
    else:
        fig = pooled_heatmap(res.pooled_max[l, h], res.pool, res.n_tokens, causal=res.causal, template=template,
                             title=f"layer {l} head {h} (pooled: long text)")
    top1 = res.top1_idx[l, h]
    rows = [(i, show_token(res.tokens[i]), show_token(res.tokens[int(top1[i])]) + f" ({int(top1[i])})",
             float(res.top1_prob[l, h, i]), float(res.sink0[l, h, i]),
             float(np.nan_to_num(summ["entropy_norm"][l, h, i]))) for i in range(p, res.n_tokens)]
    tbl = table(["pos", "generated token", "strongest key", "its weight", "mass on token 0", "norm. entropy"],
                rows[:200])
    return text, fig, tbl
