"""Exact attention reductions that the engine's statistics do not hold, computed during one extra
forward pass without ever building n x n for all heads.

A CaptureSession output hook sees each layer's q/k as the model runs; for that layer we compute the
exact softmax rows we need with kernels.attention_stats on a slice of query rows:
  * region_colsum: q rows [q0, q1) against the keys they see gives sum_{i in region} A_ij exactly
    (the engine's colsum restricted to the region);
  * row_blocks: dense rows [a, e) x keys (memory H * rows * N, bounded by the budget).
With a causal mask, rows [a, e) see keys [0, e), so attention_stats gets k[:, :, :e] and counts the
rows as the last e - a positions, which they are. Column sums of bidirectional models ignore query
positions, so any row range works there.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from kernels import StatsConfig

from ..capture import AttentionCall, check_cancel, stats_rows
from ..engine import capture


def region_colsum(call: AttentionCall, q0: int, q1: int, mem_budget_mb: int = 256) -> torch.Tensor:
    """[B, H, Nk] float32: sum over query rows q0 <= i < q1 of A_ij (zeros past the visible keys)."""
    nk = call.k.shape[2]
    st = stats_rows(call, q0, q1, StatsConfig(mem_budget_mb=mem_budget_mb))
    out = torch.zeros(call.q.shape[0], call.q.shape[1], nk, dtype=torch.float32)
    out[:, :, :st.colsum.shape[-1]] = st.colsum.float().cpu()
    return out


LayerFn = Callable[[AttentionCall], None]


def forward_reduce(lm, ids: list[int], per_layer: list[LayerFn], progress: Optional[Callable[[int], None]] = None,
                   cancel: Optional[Callable[[], bool]] = None) -> None:
    """One no-grad forward of the text; every function in per_layer is called with each layer's
    AttentionCall (q/k on the model's device). The model's own output is left unchanged."""
    def hook(call: AttentionCall, out):
        check_cancel(cancel)
        for fn in per_layer:
            fn(call)
        if progress is not None:
            progress(call.layer)
        return None

    capture(lm, torch.tensor([list(ids)]), layers=set(), output_hook=hook)
