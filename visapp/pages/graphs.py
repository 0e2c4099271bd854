"""Graphs: head-similarity graph with communities; the selected head's token-attention graph."""
from __future__ import annotations

import numpy as np
from dash import Input, Output, callback, html

from .. import ids, service
from ..components import edge_threshold, graph, section
from ..figures import arc_diagram, empty_figure, head_similarity_graph
from ..templates import SCREEN
from ..view_settings import DEFAULT
from .common import Analysis, head_rows, on_analysis, select_head_on_click

EXPORT_CONTROLS = (("graph_threshold", ids.GR_THRESHOLD, "value"), ("zoom", ids.ZOOM, "data"))


def layout(**query) -> html.Div:
    return html.Div([
        section("Head-similarity graph", html.Div(id=ids.GR_INFO), graph(ids.GR_HEADS, 600),
                help_text="Each head is linked to its nearest heads by Jensen-Shannon distance between their "
                          "(pooled) attention maps; colours are modularity communities. Click a node to select "
                          "the head."),
        section("Token-attention graph of the selected head",
                edge_threshold(ids.GR_THRESHOLD, DEFAULT.graph_threshold),
                graph(ids.GR_TOKENS, 380),
                help_text="Nodes are tokens coloured by the total attention they receive (scale without token 0); arcs go from a query to "
                          "the keys it attends to above the threshold (token 0 left out)."),
    ], id=ids.view("graphs"), className="view")


def render_heads(res, selected, template: str = SCREEN):
    g = (res.extras.get("graphs") or {}).get("heads")
    if not g or not g.get("nodes"):
        return empty_figure("head-similarity graph: not available yet", template), ""
    nodes = g["nodes"]
    index = {n["id"]: i for i, n in enumerate(nodes)}
    pos = np.array([[n["x"], n["y"]] for n in nodes], float)
    heads = [(n["layer"], n["head"]) for n in nodes]
    edges = [(index[e["source"]], index[e["target"]], e["weight"]) for e in g.get("edges", [])
             if e["source"] in index and e["target"] in index]
    fig = head_similarity_graph(pos, heads, edges, communities=[n["community"] for n in nodes], selected=selected,
                                template=template)
    info = (f"{len(nodes)} heads, {len(edges)} edges (k = {g.get('knn')} nearest), {len(g.get('communities', []))} "
            f"communities, modularity {g.get('modularity', 0):.3f}; mean JS within a layer "
            f"{g.get('mean_js_within_layer') or 0:.3f}, between layers {g.get('mean_js_between_layers') or 0:.3f}")
    return fig, info


def render_tokens(res, rows, summ: dict, selected, threshold: float, service, template: str = SCREEN):
    z, q0, k0 = rows
    l, h = selected
    if z is None:
        return empty_figure("long text: open Head detail and click a block of the pooled map to load "
                            "full-resolution attention", template, 200)
    edges = service.token_edges_block(z, q0, k0, res.tokens, threshold=threshold, max_edges=200)
    span = (min(q0, k0), max(q0 + z.shape[0], k0 + z.shape[1]))
    recv = res.colsum[l, h].astype(float)          # total attention each token receives
    return arc_diagram(res.tokens, edges, upper_name=f"attention ≥ {threshold:g}", window=span,
                       node_values=recv, node_label="received (sum)",
                       node_cmax=float(recv[1:].max()) if len(recv) > 1 else None,
                       title=f"layer {l} head {h}: {len(edges)} edges", template=template, height=400)


# ---------------------------------------------------------------- callbacks

@callback(Output(ids.GR_HEADS, "figure"), Output(ids.GR_INFO, "children"), Output(ids.GR_TOKENS, "figure"),
          Input(ids.STATE, "data"), Input(ids.GR_THRESHOLD, "value"), Input(ids.ZOOM, "data"))
@on_analysis("graphs", lambda msg: (empty_figure(msg), "", empty_figure(msg)))
def render_graphs(a: Analysis, threshold, zoom_store):
    sel = a.head
    fig, info = render_heads(a.res, sel)
    zoom = service.get_zoom(zoom_store.get("zk")) if zoom_store else None
    rows = head_rows(a.res, a.key, sel[0], sel[1], service, zoom)
    return fig, info, render_tokens(a.res, rows, a.summ, sel, float(threshold or 0.1), service)


select_head_on_click(ids.GR_HEADS)
