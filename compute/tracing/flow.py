"""Attention flow (Abnar & Zuidema 2020): max-flow on the layer graph.

Nodes (l, i), l = 0..L (0 = input tokens); edge (l-1, j) -> (l, i) with capacity Ã_l[i, j] (the head-mean
map A_l mixed with the residual, see rollout.residual_mix; functions here take A). The flow of input token j
to position P is the value of a maximum flow from (0, j) to (L, P), one max-flow per input token (networkx,
Boykov-Kolmogorov: 1.6x faster than preflow-push on these layered graphs). Exact but costly, so it
runs only up to FLOW_MAX_TOKENS keys (SmolLM2's 30 layers on the shared 2-core EPYC: 0.6 s at 16 tokens,
2.7 s at 32; the cost grows with the cube of the length, so 15-40 s at 64); past that the trace omits it
and says why.
"""
from __future__ import annotations

from typing import Callable, Optional

import networkx as nx
import numpy as np
from networkx.algorithms.flow import boykov_kolmogorov, build_residual_network

from ..errors import InputError
from .rollout import residual_mix

FLOW_MAX_TOKENS = 32          # default limit
FLOW_CEILING_TOKENS = 64      # no caller may raise the limit past this (15-40 s on SmolLM2)


def check_flow_limit(limit: int) -> int:
    if not 1 <= limit <= FLOW_CEILING_TOKENS:
        raise InputError(f"the flow limit must be between 1 and {FLOW_CEILING_TOKENS} tokens (flow's cost grows "
                         "with the cube of the length)")
    return limit


def flow_limit_reason(n_keys: int, limit: int = FLOW_MAX_TOKENS) -> Optional[str]:
    """None when flow runs on n_keys tokens, else the sentence shown instead of it."""
    if n_keys <= limit:
        return None
    return (f"attention flow runs one max-flow per input token on a graph of (layers + 1) x tokens nodes; "
            f"it is computed up to {limit} tokens and this position sees {n_keys}")


def layer_graph(maps: np.ndarray) -> nx.DiGraph:
    """DiGraph on nodes (l, i) with capacity Ã_l[i, j] on edge (l-1, j) -> (l, i); zero edges left out."""
    mixed = residual_mix(maps)
    L, n, _ = mixed.shape
    g = nx.DiGraph()
    g.add_nodes_from((l, i) for l in range(L + 1) for i in range(n))
    for l in range(1, L + 1):
        i, j = np.nonzero(mixed[l - 1] > 0)
        g.add_edges_from(((l - 1, int(b)), (l, int(a)), {"capacity": float(mixed[l - 1, a, b])})
                         for a, b in zip(i, j))
    return g


def attention_flow(maps: np.ndarray, position: int, limit: int = FLOW_MAX_TOKENS,
                   check: Optional[Callable[[], None]] = None) -> np.ndarray:
    """[n] max-flow value from each input token to (L, position). Raises ValueError past `limit`."""
    L, n, _ = maps.shape
    reason = flow_limit_reason(n, limit)
    if reason is not None:
        raise ValueError(reason)
    g = layer_graph(maps)
    residual = build_residual_network(g, "capacity")
    sink = (L, position)
    out = np.zeros(n)
    for j in range(n):
        if check is not None:
            check()
        r = boykov_kolmogorov(g, (0, j), sink, capacity="capacity", residual=residual)
        out[j] = r.graph["flow_value"]
    return out
