"""exBERT-style context search results (compute/context_search.search's hits, or search.json) as a table:
rank, similarity, text, the context with the hit token in [brackets], and the head's top keys there."""
from __future__ import annotations

import plotly.graph_objects as go

from ..templates import SCREEN
from .common import empty_figure, make_figure
from .corpus import escape


def hit_context(hit: dict) -> str:
    """The hit's context window as text with its own token in [brackets] (escaped for plotly)."""
    toks = hit["context_tokens"]
    k = hit["position"] - hit["context_start"]
    return escape("".join(toks[:k]) + "[" + toks[k] + "]" + "".join(toks[k + 1:]))


def hit_attends(hit: dict) -> str:
    return ", ".join(f"({a['position']}){escape(a['token'])} {a['weight']:.2f}" for a in hit["attends"])


def search_hits_table(result: dict, *, template: str = SCREEN) -> go.Figure:
    """result: {'hits': [...], 'query': {'token', ...}, 'by', 'layer', 'head'} (search.json's shape)."""
    hits = result.get("hits") or []
    if not hits:
        return empty_figure("no hits", template)
    cols = [[str(i + 1) for i in range(len(hits))], [f"{h['similarity']:.3f}" for h in hits],
            [f"{escape(h['text_id'])} @{h['position']}" for h in hits], [hit_context(h) for h in hits],
            [hit_attends(h) for h in hits]]
    q = result.get("query") or {}
    title = (f"tokens nearest to {escape(q.get('token', '?'))!s} by {escape(result.get('by', 'query'))} "
             f"(layer {result.get('layer')}, head {result.get('head')}; cosine)")
    trace = dict(type="table", columnwidth=[30, 60, 110, 420, 260],
                 header=dict(values=["#", "similarity", "text @ position", "context", "head attends to (weight)"],
                             align="left", fill=dict(color="#EBF0F8"), font=dict(size=12)),
                 cells=dict(values=cols, align="left", font=dict(size=12)))
    layout = dict(title=dict(text=title), height=int(min(900, 120 + 34 * len(hits))),
                  margin=dict(l=10, r=10, t=40, b=10))
    return make_figure([trace], layout, template)
