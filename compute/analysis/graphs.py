"""Graphs for the app (networkx): a head-similarity graph with communities and layout, and the
token graph of one head.

Head distance (source 'pooled', default): each head's pooled map is turned into row distributions
over key blocks (pooled_mean[r, c] * keys in block c sums to 1 over c for every row block r),
coarsened to at most `cells` blocks per side (rows averaged, key blocks summed), and
  D[a, b] = mean over row blocks r with mass of JS(P_a[r], P_b[r])   (Jensen-Shannon, log base 2,
            so 0 <= D <= 1; EchoAtt-style map similarity)
Source 'received': JS between the heads' received-attention profiles colsum / sum(colsum).
Graph: nodes 'L.H'; each head is linked to its `knn` nearest heads (symmetrised), edge weight
1 - D. Communities: networkx greedy_modularity_communities on the weights; layout: spring_layout
with a fixed seed (deterministic positions in [-1, 1]).
Token graph: nodes = tokens, directed edges query -> key with weight A_ij >= threshold (at most
max_edges, strongest first; the self edge and token 0 optional).
"""
from __future__ import annotations


import networkx as nx
import numpy as np

from ..errors import InputError
from ..result import AttentionResult
from .common import head_id, plain


def _entropy2(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) over the last axis; inputs are distributions."""
    m = 0.5 * (p + q)
    return np.clip(_entropy2(m) - 0.5 * (_entropy2(p) + _entropy2(q)), 0.0, 1.0)


def row_distributions(pooled_mean: np.ndarray, pool: int, n_tokens: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """pooled_mean [..., M, M] -> (row distributions over key blocks [..., R, C] with R, C <= cells,
    row weights [R] = valid query rows per coarse row block)."""
    m = pooled_mean.shape[-1]
    ncols = np.array([min(n_tokens, (c + 1) * pool) - c * pool for c in range(m)], float)
    dist = pooled_mean * ncols                             # each row block's distribution over key blocks
    g = max(1, -(-m // cells))
    mc = -(-m // g)
    pad = mc * g - m
    if pad:
        dist = np.concatenate([dist, np.zeros(dist.shape[:-1] + (pad,))], -1)
        dist = np.concatenate([dist, np.zeros(dist.shape[:-2] + (pad, dist.shape[-1]))], -2)
    rows_in = np.concatenate([ncols, np.zeros(pad)])       # rows per block (all rows valid)
    dist = dist.reshape(dist.shape[:-1] + (mc, g)).sum(-1)                 # key blocks summed
    w = rows_in.reshape(mc, g)
    dist = (dist.reshape(dist.shape[:-2] + (mc, g, mc)) * w[:, :, None]).sum(-2)
    rw = w.sum(-1)
    dist = dist / np.maximum(rw, 1)[:, None]               # row-weighted average of the row distributions
    return dist, rw


def head_distance_matrix(res: AttentionResult, source: str = "pooled", cells: int = 32) -> tuple[list[str], np.ndarray]:
    """(head ids ['L.H'] in layer-major order, D [K, K] float64 symmetric, zero diagonal)."""
    L, H = res.n_layers, res.n_heads
    ids = [head_id(l, h) for l in range(L) for h in range(H)]
    if source == "received":
        x = res.colsum.reshape(L * H, 1, -1).astype(np.float64)
        x = x / np.maximum(x.sum(-1, keepdims=True), 1e-30)
        rw = np.ones(1)
    elif source == "pooled":
        x, rw = row_distributions(res.pooled_mean.astype(np.float64), res.pool, res.n_tokens, cells)
        x = x.reshape(L * H, *x.shape[-2:])
    else:
        raise InputError("graph source must be 'pooled' or 'received'")
    mass = x.sum(-1) > 0                                   # [K, R] rows with attention
    K = x.shape[0]
    D = np.zeros((K, K))
    for a in range(K):
        js = js_divergence(x[a][None], x)                  # [K, R]
        both = mass[a][None] & mass
        wr = both * rw[None]
        D[a] = np.where(wr.sum(-1) > 0, (js * wr).sum(-1) / np.maximum(wr.sum(-1), 1e-30), 1.0)
    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    return ids, D


def knn_graph(ids: list[str], D: np.ndarray, knn: int = 4) -> nx.Graph:
    """Each node linked to its knn nearest others (symmetrised); weight = 1 - D, attribute js = D."""
    G = nx.Graph()
    for n in ids:
        layer, head = map(int, n.split("."))
        G.add_node(n, layer=layer, head=head)
    K = len(ids)
    k = min(knn, K - 1)
    for a in range(K):
        order = [b for b in np.argsort(D[a], kind="stable") if b != a][:k]
        for b in order:
            G.add_edge(ids[a], ids[b], weight=float(max(1e-9, 1.0 - D[a, b])), js=float(D[a, b]))
    return G


def head_graph(res: AttentionResult, source: str = "pooled", cells: int = 32, knn: int = 4, seed: int = 0) -> dict:
    """report.json 'graphs'['heads']: {source, cells, knn, metric, nodes [{id, layer, head, community,
    x, y, degree}], edges [{source, target, weight, js}], communities [[ids]], modularity,
    mean_js_within_layer, mean_js_between_layers}"""
    ids, D = head_distance_matrix(res, source, cells)
    G = knn_graph(ids, D, knn)
    comms = [sorted(c, key=lambda n: tuple(map(int, n.split(".")))) for c in
             nx.algorithms.community.greedy_modularity_communities(G, weight="weight")] if G.number_of_edges() else [ids]
    comms.sort(key=lambda c: (-len(c), c[0]))
    of = {n: k for k, c in enumerate(comms) for n in c}
    q = nx.algorithms.community.modularity(G, comms, weight="weight") if G.number_of_edges() else 0.0
    pos = nx.spring_layout(G, seed=seed, weight="weight")
    layers = np.array([int(n.split(".")[0]) for n in ids])
    same = layers[:, None] == layers[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    return plain({
        "source": source, "cells": cells, "knn": knn, "seed": seed,
        "metric": "mean Jensen-Shannon divergence (base 2) of row distributions",
        "nodes": [{"id": n, "layer": G.nodes[n]["layer"], "head": G.nodes[n]["head"], "community": of[n],
                   "x": float(pos[n][0]), "y": float(pos[n][1]), "degree": G.degree(n)} for n in ids],
        "edges": [{"source": a, "target": b, "weight": d["weight"], "js": d["js"]} for a, b, d in G.edges(data=True)],
        "communities": comms, "modularity": q,
        "mean_js_within_layer": float(D[same & off].mean()) if (same & off).any() else None,
        "mean_js_between_layers": float(D[~same].mean()) if (~same).any() else None,
    })


def token_graph(attn: np.ndarray, tokens: list[str], threshold: float = 0.1, max_edges: int = 200,
                include_self: bool = False, include_first: bool = True) -> dict:
    """Pure: one head's map attn [N, N] (rows = queries) -> {nodes [{id, token, received, attended}],
    edges [{source (query), target (key), weight}], threshold, n_edges_above (before the cap)}."""
    a = np.asarray(attn, dtype=np.float64)
    n = a.shape[0]
    if a.shape != (n, n) or len(tokens) != n:
        raise InputError("token graph: the map must be [N, N] with one token per row")
    keep = a >= threshold
    if not include_self:
        np.fill_diagonal(keep, False)
    if not include_first:
        keep[:, 0] = False
    qi, kj = np.nonzero(keep)
    w = a[qi, kj]
    order = np.argsort(-w, kind="stable")
    n_above = len(order)
    order = order[:max_edges]
    return plain({
        "threshold": threshold, "n_edges_above": n_above,
        "nodes": [{"id": i, "token": tokens[i], "received": float(a[:, i].sum()), "attended": float(a[i].sum())}
                  for i in range(n)],
        "edges": [{"source": int(qi[k]), "target": int(kj[k]), "weight": float(w[k])} for k in order],
    })


def head_map(lm, res: AttentionResult, layer: int, head: int, max_tokens: int = 4096) -> np.ndarray:
    """[N, N] float32 map of one head: from res.maps when stored (float16), else recomputed exactly
    with one extra forward that keeps only that layer's q/k."""
    if not (0 <= layer < res.n_layers and 0 <= head < res.n_heads):
        raise InputError(f"no head {layer}.{head}: the model has {res.n_layers} layers x {res.n_heads} heads")
    if res.maps is not None:
        return res.maps[layer, head].astype(np.float32)
    if res.n_tokens > max_tokens:
        raise InputError(f"a single head's map of {res.n_tokens} tokens is too large to draw (limit {max_tokens})")
    from ..capture import row_blocks
    from .live import forward_reduce
    out = np.zeros((res.n_tokens, res.n_tokens), np.float32)

    def grab(call):
        if call.layer != layer:
            return
        g = call.q.shape[1] // call.k.shape[1]
        one = type(call)(call.layer, call.q[:, head:head + 1], call.k[:, head // g:head // g + 1], call.v,
                         call.key_valid, call.causal, call.scale, call.window)
        for a, e, P in row_blocks(one):
            out[a:e, :P.shape[-1]] = P[0, 0].numpy()

    forward_reduce(lm, res.token_ids, [grab])
    return out
