"""Head detail: the head's map (full, or pooled with click-to-zoom for long texts), per-query entropy,
attention received per key with sinks marked, token graph, and dependency arcs against attention."""
from __future__ import annotations

from typing import Optional

import numpy as np
from dash import dcc, html

from .. import ids
from ..figures import (arc_diagram, attention_heatmap, empty_figure, pooled_heatmap, query_profile,
                       received_bars, token_labels)
from ..templates import SCREEN
from .common import controls, edge_threshold, graph, labelled, section


def layout() -> html.Div:
    return html.Div([
        section("Head detail",
                controls(
                    labelled("Layer", dcc.Dropdown(id=ids.HD_LAYER, options=[], value=0, clearable=False,
                                                   style={"width": "90px"})),
                    labelled("Head", dcc.Dropdown(id=ids.HD_HEAD, options=[], value=0, clearable=False,
                                                  style={"width": "90px"})),
                    labelled("Colour scale", dcc.RadioItems(
                        id=ids.HD_SCALE, value="log", inline=True,
                        options=[{"label": "log (sink-aware)", "value": "log"},
                                 {"label": "token 0 apart", "value": "split"},
                                 {"label": "linear", "value": "linear"}])),
                    labelled("Pooled blocks", dcc.RadioItems(
                        id=ids.HD_POOL, value="max", inline=True,
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
                edge_threshold(ids.HD_THRESHOLD),
                graph(ids.HD_GRAPH, 360),
                help_text="Arcs from each query to the keys it attends to with weight above the threshold "
                          "(token 0 left out: its arcs would hide the rest)."),
        section("Dependency parse vs attention", graph(ids.HD_DEPS, 380),
                help_text="Above: each query's strongest key (token 0 left out). Below: the spaCy dependency "
                          "parse, each word at its first token (Dodrio's dependency view)."),
    ], id=ids.view("head"), className="view")


def head_rows(res, key: str, l: int, h: int, service, zoom: Optional[dict]):
    """(z, q0, k0) of the attention rows available without a job: the full map, or a zoomed block."""
    full = service.head_map(key, l, h)
    if full is not None:
        return full, 0, 0
    if zoom and zoom.get("head") == [l, h] and zoom.get("z") is not None:
        return zoom["z"], zoom["q0"], zoom["k0"]
    return None, 0, 0


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
