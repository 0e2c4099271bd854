"""Dense fp64 oracle: materialises the whole [B,H,Nq,Nk] map. Tests only; it defines the semantics
that the chunked torch backend and the Triton kernels must reproduce (see stats_types)."""
from __future__ import annotations

from typing import Optional

import torch

from .positions import key_validity, positions, query_positions, query_validity
from .stats_types import AttentionStats, StatsConfig, VariantMask, dist_bin_edges


def dense_visibility(b, h, nq, nk, *, causal, kvalid, variant: Optional[VariantMask], scores=None):
    """[B,H,Nq,Nk] bool of visible keys."""
    dev = kvalid.device
    kpos = positions(kvalid)
    qpos = query_positions(kpos, nq)
    off = nk - nq
    vis = kvalid[:, None, None, :].expand(b, h, nq, nk).clone()
    if causal:
        i = torch.arange(nq, device=dev)[:, None] + off
        j = torch.arange(nk, device=dev)[None, :]
        vis &= (j <= i)[None, None]
    if variant is not None:
        d = qpos[:, :, None] - kpos[:, None, :]           # [B,Nq,Nk]
        if variant.window is not None:
            keep = (d < variant.window) & (-d < variant.window)
            if variant.sink_keep:
                keep |= (kpos[:, None, :] < variant.sink_keep)
            vis &= keep[:, None]
        if variant.block_mask is not None:
            bm = variant.block_mask.to(dev)
            qi = torch.arange(nq, device=dev) // variant.block_q
            kj = torch.arange(nk, device=dev) // variant.block_k
            vis &= bm[:, :, qi][:, :, :, kj]
        if variant.row_threshold is not None:
            vis &= scores >= variant.row_threshold.to(scores.dtype)[..., None]
    return vis


def attention_stats_dense(q, k, v, *, scale: float, causal: bool, key_valid=None,
                          config: StatsConfig = StatsConfig(), variant: Optional[VariantMask] = None,
                          dtype=torch.float64) -> AttentionStats:
    b, h, nq, dd = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = h // hkv
    kvalid = key_validity(key_valid, b, nk, q.device)
    kk = k.to(dtype).repeat_interleave(g, dim=1)
    vv = v.to(dtype).repeat_interleave(g, dim=1)
    s = torch.matmul(q.to(dtype), kk.transpose(-1, -2)) * scale
    vis = dense_visibility(b, h, nq, nk, causal=causal, kvalid=kvalid, variant=variant, scores=s)
    has = vis.any(-1)
    sm = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(sm, -1)
    p = torch.exp(sm - torch.where(has, lse, torch.zeros_like(lse))[..., None])
    p = torch.where(vis, p, torch.zeros_like(p))
    st = stats_from_probs(p, vis, kvalid, config)
    st.out = torch.matmul(p, vv).to(torch.float32)
    st.lse = lse.to(torch.float32)
    if variant is not None and variant.lse_full is not None:
        st.retained = torch.where(has, torch.exp(lse - variant.lse_full.to(dtype)),
                                  torch.zeros_like(lse)).to(torch.float32)
    return st


def stats_from_probs(p: torch.Tensor, vis: torch.Tensor, kvalid: torch.Tensor,
                     config: StatsConfig = StatsConfig()) -> AttentionStats:
    """Every statistic except out/lse/retained from a dense probability map p [B,H,Nq,Nk] and its
    visibility mask (also used to check the engine against a model's own eager attention weights)."""
    b, h, nq, nk = p.shape
    dtype = p.dtype
    qvalid = query_validity(kvalid, nq)
    kpos = positions(kvalid)
    qpos = query_positions(kpos, nq)
    has = vis.any(-1)
    plogp = torch.where(vis & (p > 0), p * torch.log(torch.where(p > 0, p, torch.ones_like(p))),
                        torch.zeros_like(p))
    entropy = -plogp.sum(-1)

    d = (qpos[:, :, None] - kpos[:, None, :]).to(dtype)[:, None]          # [B,1,Nq,Nk]
    absd = d.abs()
    kp = kpos[:, None, None, :]
    sink0 = (p * (kp == 0)).sum(-1)
    sink_s = (p * ((kp >= 0) & (kp < config.sink_tokens))).sum(-1)
    prev = (p * (d == 1)).sum(-1)
    local = (p * (absd < config.local_window)).sum(-1)
    exp_dist = (p * absd).sum(-1)
    top1_prob, top1_idx = p.max(-1)
    top1_idx = torch.where(has, top1_idx, torch.full_like(top1_idx, -1))

    rowmask = (qvalid[:, None, :, None]).to(dtype)
    pv = p * rowmask
    colsum = pv.sum(-2)
    n_queries = (vis & qvalid[:, None, :, None]).sum(-2).to(dtype)

    hist = []
    for lo, hi in dist_bin_edges(config.n_dist_bins):
        hist.append((pv * ((absd >= lo) & (absd < hi))).sum((-1, -2)))
    dist_hist = torch.stack(hist, -1)

    P = config.pool_for(nk)
    mq, mk = -(-nq // P), -(-nk // P)
    pooled_mean = torch.zeros(b, h, mq, mk, dtype=dtype)
    pooled_max = torch.zeros(b, h, mq, mk, dtype=dtype)
    for a in range(mq):
        rows = slice(a * P, min(nq, (a + 1) * P))
        nvr = qvalid[:, rows].sum(-1).to(dtype)                           # [B]
        for c in range(mk):
            cols = slice(c * P, min(nk, (c + 1) * P))
            blk = pv[:, :, rows, cols]
            ncols = cols.stop - cols.start
            denom = (nvr * ncols).clamp(min=1)[:, None]
            pooled_mean[:, :, a, c] = blk.sum((-1, -2)) / denom
            pooled_max[:, :, a, c] = blk.amax((-1, -2))

    f = torch.float32
    return AttentionStats(
        out=None, lse=torch.zeros(b, h, nq), entropy=entropy.to(f), n_visible=vis.sum(-1).to(f),
        sink0=sink0.to(f), sink_s=sink_s.to(f), top1_idx=top1_idx, top1_prob=top1_prob.to(f),
        prev_mass=prev.to(f), local_mass=local.to(f), exp_dist=exp_dist.to(f),
        colsum=colsum.to(f), n_queries=n_queries.to(f), pooled_mean=pooled_mean.to(f),
        pooled_max=pooled_max.to(f), dist_hist=dist_hist.to(f), pool=P,
        maps=p.to(f) if config.full_maps else None)
