"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per layer l the head-mean map A_l gets the residual connection as identity, rows renormalised:
    Ã_l = 0.5 A_l + 0.5 I.
Rollout R = Ã_L ... Ã_1 (top layer on the left); row P of R scores each input token for position P.
Computed top-down as a row vector, v_L = e_P, v_{l-1} = v_l Ã_l, one layer's Ã at a time, so only the
[L, n, n] head-mean maps and [L+1, n] vectors are held (never the product matrix nor all Ã at once).
v_l is what the layer-by-token graph shows: how much of P's rollout passes through token i's node after
layer l (v_0 = the rollout). A heuristic about mixing, not a gradient attribution.
Every function here takes the head-mean maps A [L, n, n] (rows 0..n-1 of each layer) and mixes itself.
"""
from __future__ import annotations

import numpy as np


def residual_mix(maps: np.ndarray) -> np.ndarray:
    """[..., n, n] head-mean attention -> Ã = 0.5 A + 0.5 I with every row summing to 1 (float64)."""
    a = np.asarray(maps, dtype=np.float64)
    n = a.shape[-1]
    mixed = 0.5 * a + 0.5 * np.eye(n)
    return mixed / mixed.sum(-1, keepdims=True)


def rollout_matrix(maps: np.ndarray) -> np.ndarray:
    """The full product Ã_L ... Ã_1 [n, n] (dense reference; tests and tiny inputs)."""
    r = np.eye(maps.shape[-1])
    for a in maps:
        r = residual_mix(a) @ r
    return r


def rollout_by_layer(maps: np.ndarray, position: int) -> np.ndarray:
    """[L + 1, n]: row l is e_P Ã_L ... Ã_{l+1} (row L = e_P, row 0 = the rollout of P)."""
    L, n, _ = maps.shape
    v = np.zeros((L + 1, n))
    v[L, position] = 1.0
    for l in range(L, 0, -1):
        v[l - 1] = v[l] @ residual_mix(maps[l - 1])
    return v


def rollout_edges(maps: np.ndarray, by_layer: np.ndarray, max_edges: int = 400) -> list[list]:
    """The strongest edges of the layer-by-token graph, strongest first: [l, i, j, w] with w = v_l[i] Ã_l[i, j],
    the part of P's rollout that passes from token j's node below layer l to token i's node above it
    (l = 1..L). The weights of one layer sum to 1, so edges are comparable across layers."""
    cand = []
    for l in range(1, maps.shape[0] + 1):
        w = (by_layer[l][:, None] * residual_mix(maps[l - 1])).ravel()
        k = min(max_edges, int(np.count_nonzero(w > 0)))
        if k:
            top = np.argpartition(-w, k - 1)[:k]
            i, j = np.unravel_index(top, (maps.shape[1], maps.shape[2]))
            cand.extend(zip([l] * k, i.tolist(), j.tolist(), w[top].tolist()))
    cand.sort(key=lambda e: -e[3])
    return [list(e) for e in cand[:max_edges]]
