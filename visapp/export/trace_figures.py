"""Export entries of the model view and the trace view (visapp.pages.model / visapp.pages.trace): the same
view functions the pages call, and tables from the trace dict itself (the numbers as computed, not as read
back from the figure)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..figures import show_token
from ..pages import model, trace
from .tables import Table, py

NO_TRACE = ("no trace of this analysis: open the 'Trace a token' view in the app and pick a position "
            "(headless: python -m compute trace)")


def traced(ctx) -> tuple[Optional[dict], object]:
    """(trace, neuron view or reason) of the context, computed once per context."""
    memo = ctx.__dict__.setdefault("_traced", {})
    if "v" not in memo:
        memo["v"] = trace.export_trace(ctx.key, ctx.trace, ctx.head)
    return memo["v"]


def _fig(i):
    def build(ctx, t):
        tr, nv = traced(ctx)
        return trace.render(ctx.res, tr, nv, ctx.head, template=t)[i]
    return build


def _missing(section: Optional[str], need: str):
    def why(ctx):
        tr, nv = traced(ctx)
        if tr is None:
            return NO_TRACE
        if section == "neuron":
            return None if isinstance(nv, dict) else f"neuron view: {nv}"
        if tr.get(need) is None:
            return f"{section}: {(tr.get('omitted') or {}).get(section, 'not computed')}"
        return None
    return why


def model_tables(ctx, fig) -> dict:
    """Each panel cell: layer, head, the token range of its query and key block, its (block mean) weight."""
    from ..figures.model_view import panel_maps
    maps = model.full_maps(ctx.res, ctx.key, ctx.service)
    res = ctx.res
    z, edges = panel_maps(maps=maps, pooled=None if maps is not None else res.pooled_mean, pool=res.pool,
                          n_tokens=res.n_tokens, causal=res.causal)
    L, H, m, _ = z.shape
    rows = [[l, h, int(edges[i]), int(edges[i + 1]) - 1, int(edges[j]), int(edges[j + 1]) - 1, py(float(z[l, h, i, j]))]
            for l in range(L) for h in range(H) for i in range(m) for j in range(m) if np.isfinite(z[l, h, i, j])]
    return {"cells": Table(["layer", "head", "query_from", "query_to", "key_from", "key_to", "weight"], rows)}


def _tok(tr, i):
    return show_token(tr["tokens"][i])


def rollout_tables(ctx, fig) -> dict:
    tr, _ = traced(ctx)
    flow = tr.get("flow")
    rows = [[i, _tok(tr, i), py(float(r)), None if flow is None else py(float(flow[i]))]
            for i, r in enumerate(tr["rollout"])]
    return {"tokens": Table(["position", "token", "rollout", "flow"], rows)}


def graph_tables(ctx, fig) -> dict:
    tr, _ = traced(ctx)
    by = np.asarray(tr["rollout_by_layer"], float)
    share = Table(["after_layer"] + [f"{i}:{_tok(tr, i)}" for i in range(by.shape[1])],
                  [[l] + [py(float(v)) for v in row] for l, row in enumerate(by)])
    edges = Table(["layer", "query", "key", "weight"],
                  [[int(l), int(i), int(j), py(float(w))] for l, i, j, w in tr["rollout_edges"]])
    return {"share": share, "edges": edges}


def lens_tables(ctx, fig) -> dict:
    tr, _ = traced(ctx)
    rows = [[r["layer"], k + 1, show_token(t["token"]), t.get("id"), py(float(t["prob"])),
             r.get("next_token_rank"), py(r.get("next_token_prob"))]
            for r in tr["logit_lens"] for k, t in enumerate(r["top"])]
    return {"lens": Table(["layer", "rank", "token", "token_id", "prob", "next_token_rank", "next_token_prob"], rows)}


def contribution_tables(ctx, fig) -> dict:
    tr, _ = traced(ctx)
    c = np.asarray(tr["contributions"], float)
    rows = [[l, h, py(float(c[l, h]))] for l in range(c.shape[0]) for h in range(c.shape[1])]
    total = Table(["target_token", "logit", "heads_sum", "rest", "decomposition_error"],
                  [[show_token(tr["contribution_target"]["token"]), py(float(tr["prediction"]["logit"])),
                    py(float(c.sum())), py(float(tr["contribution_rest"])), py(float(tr["decomposition_error"]))]])
    return {"heads": Table(["layer", "head", "contribution"], rows), "total": total}


def neuron_tables(ctx, fig) -> dict:
    _, nv = traced(ctx)
    pre = "q_pre" in nv
    cols = ["dim"] + (["q_pre", "k_pre", "product_pre"] if pre else []) + ["q", "k", "product"]
    rows = [[d] + ([py(nv["q_pre"][d]), py(nv["k_pre"][d]), py(nv["product_pre"][d])] if pre else [])
            + [py(nv["q"][d]), py(nv["k"][d]), py(nv["product"][d])] for d in range(len(nv["q"]))]
    keys = Table(["key", "logit", "prob"], [[j, py(l), py(p)] for j, (l, p) in
                                            enumerate(zip(nv["row_logits"], nv["row_probs"]))])
    return {"dims": Table(cols, rows), "row": keys}


def _where(ctx) -> str:
    tr, _ = traced(ctx)
    P = tr["position"] if tr else "?"
    return f"position {P} of a {ctx.res.n_tokens}-token text, {ctx.res.model}"


def specs(FigureSpec, grid_aspect) -> dict:
    """REGISTRY entries {view: [FigureSpec]} (the registry passes its FigureSpec class and grid aspect)."""
    return {
        "model": [
            FigureSpec("model", "grid", "Model view (every head's map)",
                       lambda c, t: model.render_view(c.res, model.full_maps(c.res, c.key, c.service), c.head,
                                                      template=t),
                       model_tables, grid_aspect,
                       lambda c: f"Attention maps of every head ({c.res.model}, {c.res.n_tokens}-token text), layer 0 "
                                 "on top, log colour scale; " + model.note(c.res)),
        ],
        "trace": [
            FigureSpec("trace", "rollout", "Rollout and flow bars", _fig(0), rollout_tables, (0.62, 0.4),
                       lambda c: f"Attention rollout and flow of {_where(c)} (Abnar & Zuidema 2020; "
                                 "mixing heuristics, not gradient attributions).", _missing("rollout", "rollout")),
            FigureSpec("trace", "graph", "Rollout through the layers", _fig(1), graph_tables, (0.8, 0.5),
                       lambda c: f"Share of the rollout of {_where(c)} at each token after each layer.",
                       _missing("rollout", "rollout")),
            FigureSpec("trace", "lens", "Logit lens", _fig(2), lens_tables, (0.9, 0.6),
                       lambda c: f"Top tokens after each layer through the final norm and unembedding, {_where(c)}.",
                       _missing("logit_lens", "logit_lens")),
            FigureSpec("trace", "contributions", "Head contributions", _fig(3), contribution_tables, grid_aspect,
                       lambda c: f"Direct contribution of each head to the predicted token's logit, {_where(c)}.",
                       _missing("contributions", "contributions")),
            FigureSpec("trace", "neuron", "Neuron view", _fig(4), neuron_tables, (0.75, 0.5),
                       lambda c: f"q and k per dimension before and after RoPE, layer {c.head[0]} head {c.head[1]}, "
                                 f"{_where(c)}.", _missing("neuron", "")),
        ],
    }
