"""Forwards of inputs other than the analysed text (the basin calibration prompts, on-demand maps of one
head), with a per-layer function seeing each layer's q/k; and region_colsum on one such layer.

The analysed text itself never comes here: its reductions are planned before its single forward and
filled from the engine's own probability blocks (plan.py, reductions.py, compute.pipeline).
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
