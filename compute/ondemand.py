"""On-demand exact maps for the app: one layer's q/k captured with an early stop, and full-resolution
blocks of one head computed from them, so long inputs never need every head's n x n map.

layer_qk runs the model only up to the requested layer (an output hook stops the forward once that
layer's q/k are copied). head_block turns them into exact attention rows with kernels.attention_stats
(through analysis.live.row_blocks, the same path the analysis reductions use) and keeps a window of
key columns. Results are plain numpy so the app (which never imports torch) can cache them.

set_torch_threads exists for fork safety: libgomp (torch's OpenMP) hangs in a forked child once the
parent has run a parallel region, so a web process that forks background jobs keeps itself at one
thread, and the jobs set their own count.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .capture import AttentionCall
from .engine import capture
from .errors import InputError


class _Stop(Exception):
    """Raised by the hook to end the forward once the wanted layer has been seen."""


def layer_qk(lm, token_ids: list[int], layer: int) -> dict:
    """{'q' [H, N, D] float32, 'k' [Hkv, N, D] float32, 'causal', 'scale', 'layer'} of one layer."""
    L = lm.info.n_layers
    if not 0 <= layer < L:
        raise InputError(f"no layer {layer}: the model has layers 0..{L - 1}")
    got: dict = {}

    def hook(call: AttentionCall, out):
        if call.layer == layer:
            got.update(q=call.q[0].detach().float().cpu().numpy().copy(),
                       k=call.k[0].detach().float().cpu().numpy().copy(),
                       causal=bool(call.causal), scale=float(call.scale), layer=layer, window=call.window)
            raise _Stop
        return None

    try:
        capture(lm, torch.tensor([list(token_ids)]), layers=set(), output_hook=hook)
    except _Stop:
        pass
    if not got:
        raise InputError(f"layer {layer} was not reached: the model does not route attention through "
                         "transformers' attention interface")
    return got


def head_block(qk: dict, head: int, q0: int, q1: int, k0: int, k1: int, mem_budget_mb: int = 128) -> np.ndarray:
    """Exact attention weights of one head, query rows [q0, q1) x key columns [k0, k1), float32.
    Keys a causal row cannot see are 0 (the figure blanks them)."""
    from .capture import row_blocks

    q, k = qk["q"], qk["k"]
    n_heads, n = q.shape[0], q.shape[1]
    if not 0 <= head < n_heads:
        raise InputError(f"no head {head}: the layer has heads 0..{n_heads - 1}")
    if not (0 <= q0 < q1 <= n and 0 <= k0 < k1 <= n):
        raise InputError(f"block {q0}:{q1} x {k0}:{k1} is outside the {n} tokens")
    g = n_heads // k.shape[0]
    call = AttentionCall(qk["layer"], torch.from_numpy(q[None, head:head + 1]),
                         torch.from_numpy(k[None, head // g:head // g + 1]), None, None, qk["causal"], qk["scale"],
                         qk.get("window"))
    out = np.zeros((q1 - q0, k1 - k0), np.float32)
    for a, e, P in row_blocks(call, (q0, q1), mem_budget_mb):
        cols = P.shape[-1]                       # a causal block sees keys [0, e)
        hi = min(k1, cols)
        if hi > k0:
            out[a - q0:e - q0, :hi - k0] = P[0, 0, :, k0:hi].numpy()
    return out


def set_torch_threads(n: Optional[int]) -> int:
    """Set torch's intra-op threads (>= 1); returns the number now in use."""
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()
