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

from typing import Callable, Iterator, Optional

import torch

from kernels import StatsConfig, attention_stats

from ..capture import AttentionCall, check_cancel
from ..engine import capture


def _keys_for_rows(call: AttentionCall, e: int) -> int:
    return e if call.causal else call.k.shape[2]


def _stats_rows(call: AttentionCall, a: int, e: int, config: StatsConfig):
    kend = _keys_for_rows(call, e)
    kv = None if call.key_valid is None else call.key_valid[:, :kend]
    return attention_stats(call.q[:, :, a:e], call.k[:, :, :kend], None, scale=call.scale, causal=call.causal,
                           key_valid=kv, config=config, backend="torch")


def region_colsum(call: AttentionCall, q0: int, q1: int, mem_budget_mb: int = 256) -> torch.Tensor:
    """[B, H, Nk] float32: sum over query rows q0 <= i < q1 of A_ij (zeros past the visible keys)."""
    nk = call.k.shape[2]
    st = _stats_rows(call, q0, q1, StatsConfig(mem_budget_mb=mem_budget_mb))
    out = torch.zeros(call.q.shape[0], call.q.shape[1], nk, dtype=torch.float32)
    out[:, :, :st.colsum.shape[-1]] = st.colsum.float().cpu()
    return out


def row_blocks(call: AttentionCall, rows: Optional[tuple[int, int]] = None,
               mem_budget_mb: int = 256) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (a, e, P) with P [B, H, e - a, kend] the exact attention rows a..e-1 (float32, CPU)."""
    b, h, nq, _ = call.q.shape
    nk = call.k.shape[2]
    r0, r1 = rows if rows is not None else (0, nq)
    # The dense block plus attention_stats' own transient buffers: about 4 fp32 copies.
    per_row = max(1, b * h * nk * 4 * 4)
    step = max(1, min(r1 - r0, (mem_budget_mb << 20) // per_row))
    cfg = StatsConfig(full_maps=True, mem_budget_mb=mem_budget_mb)
    for a in range(r0, r1, step):
        e = min(r1, a + step)
        yield a, e, _stats_rows(call, a, e, cfg).maps.float().cpu()


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
