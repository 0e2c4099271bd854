"""Neuron view (BertViz): how query P and key j of one head make an attention weight.

q_P and k_j per dimension as the attention function gets them (after the model's rotary position encoding),
their elementwise product, its sum times the softmax scale = the logit s_Pj, and the softmax of the row's
logits over the keys P sees = the attention weight. The same before the rotation (q_proj / k_proj outputs),
whose sum is what the logit would be without positions. GQA: query head h reads key head h // (H / H_kv).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .forward import DENSE_MAX_TOKENS, ForwardTrace


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def check_neuron(layer: int, head: int, key: int, n_layers: int, n_heads: int, n_keys: int, position: int) -> None:
    """InputError unless head (layer, head) exists and position sees key (n_keys keys)."""
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise InputError(f"no head {layer}.{head}: the model has {n_layers} layers x {n_heads} heads")
    if not 0 <= key < n_keys:
        raise InputError(f"key {key} is not visible from position {position} (keys 0..{n_keys - 1})")


def neuron_view(ft: ForwardTrace, layer: int, head: int, key: int) -> dict:
    if ft.q is None:
        raise InputError(f"the neuron view keeps q and k only up to {DENSE_MAX_TOKENS} visible keys; "
                         f"position {ft.position} sees {ft.n_keys}")
    L, H, _ = ft.q.shape
    check_neuron(layer, head, key, L, H, ft.k.shape[2], ft.position)
    kv_head = head // (H // ft.k.shape[1])
    scale = float(ft.scale[layer])
    q = ft.q[layer, head].astype(np.float64)
    ks = ft.k[layer, kv_head].astype(np.float64)                    # [n, D]
    logits = ks @ q * scale
    probs = _softmax(logits)
    out = {"layer": layer, "head": head, "kv_head": kv_head, "query": ft.position, "key": key, "scale": scale,
           "q": q.tolist(), "k": ks[key].tolist(), "product": (q * ks[key]).tolist(),
           "dot": float(q @ ks[key]), "logit": float(logits[key]), "prob": float(probs[key]),
           "row_logits": logits.tolist(), "row_probs": probs.tolist()}
    if ft.q_pre is not None:
        qp = ft.q_pre[layer, head].astype(np.float64)
        kp = ft.k_pre[layer, kv_head, key].astype(np.float64)
        out.update(q_pre=qp.tolist(), k_pre=kp.tolist(), product_pre=(qp * kp).tolist(), dot_pre=float(qp @ kp))
    else:
        out["pre_note"] = "no separate pre-rotation q/k: this model adds positions at the embeddings"
    return out
