"""Exact chunked attention statistics in torch: the CPU backend and the Triton kernels' twin.

Query rows are processed in chunks (sized from a memory budget) against all keys the chunk can see,
so memory is O(chunk x Nk) instead of O(Nq x Nk) per head, and causal chunks skip the keys past
their last row. GQA is handled by grouping query heads under their kv head (no repeat of K/V).
Definitions live in stats_types; reference.py is the dense fp64 oracle.
"""
from __future__ import annotations

from typing import Optional

import torch

from .positions import key_validity, positions, query_positions, query_validity
from .stats_types import AttentionStats, StatsConfig, VariantMask, dist_bin_edges

NEG = -1.0e30          # finite mask value: exp underflows to 0 and 0 * NEG stays 0 (no NaN)


def rows_per_chunk(b: int, h: int, nk: int, pool: int, budget_mb: int, n_buffers: int = 2) -> int:
    """Query rows per chunk: two fp32 [B,H,rows,Nk] buffers within the budget, a multiple of pool."""
    per_row = max(1, b * h * nk * 4 * n_buffers)
    rows = max(1, (budget_mb << 20) // per_row)
    return max(pool, rows // pool * pool)


def _mass_below(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mass of keys with index < t, read from the row cumsum c ([..., rows, K]); t broadcastable
    to [..., rows, n] of int64 index thresholds."""
    kend = c.shape[-1]
    t = t.clamp(0, kend)
    idx = (t - 1).clamp(min=0)
    shape = c.shape[:-1] + (t.shape[-1],)
    got = c.gather(-1, idx.expand(shape))
    return torch.where(t.expand(shape) > 0, got, torch.zeros((), dtype=c.dtype))


def _block_reduce(x: torch.Tensor, pool: int, op: str) -> torch.Tensor:
    """Reduce the last dim of [..., R, K] in groups of `pool` (ragged tail allowed)."""
    k = x.shape[-1]
    kf = k // pool * pool
    red = (lambda t, d: t.sum(d)) if op == "sum" else (lambda t, d: t.amax(d))
    parts = []
    if kf:
        parts.append(red(x[..., :kf].unflatten(-1, (kf // pool, pool)), -1))
    if kf < k:
        parts.append(red(x[..., kf:], -1).unsqueeze(-1))
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


def attention_stats_torch(q: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor], *, scale: float,
                          causal: bool, key_valid: Optional[torch.Tensor] = None,
                          config: StatsConfig = StatsConfig(),
                          variant: Optional[VariantMask] = None) -> AttentionStats:
    """q [B,H,Nq,D]; k, v [B,Hkv,Nk,D] (any strides, H a multiple of Hkv); v=None: stats only."""
    b, h, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({hkv})")
    g = h // hkv
    dev = q.device
    f32 = torch.float32
    off = nk - nq
    kvalid = key_validity(key_valid, b, nk, dev)
    qvalid = query_validity(kvalid, nq)
    all_valid = bool(kvalid.all())
    kpos = positions(kvalid)
    qpos = query_positions(kpos, nq)
    variant = variant if (variant is not None and variant.active) else None
    pool = config.pool_for(nk)
    mq, mk = -(-nq // pool), -(-nk // pool)
    bins = dist_bin_edges(config.n_dist_bins)
    S = config.sink_tokens
    W = config.local_window

    def zeros(*shape, dtype=f32):
        return torch.zeros(*shape, dtype=dtype, device=dev)

    out = torch.zeros(b, h, nq, v.shape[-1], dtype=q.dtype, device=dev) if v is not None else None
    lse, ent, nvis = zeros(b, h, nq), zeros(b, h, nq), zeros(b, h, nq)
    sink0, sink_s, top1p = zeros(b, h, nq), zeros(b, h, nq), zeros(b, h, nq)
    prev, local, edist = zeros(b, h, nq), zeros(b, h, nq), zeros(b, h, nq)
    top1i = torch.full((b, h, nq), -1, dtype=torch.long, device=dev)
    colsum, nqry = zeros(b, h, nk), zeros(b, h, nk)
    psum, pmax = zeros(b, h, mq, mk), zeros(b, h, mq, mk)
    hist = zeros(b, h, len(bins))
    maps = zeros(b, h, nq, nk) if config.full_maps else None
    retained = zeros(b, h, nq) if (variant is not None and variant.lse_full is not None) else None

    kf = k.to(f32)
    vf = v.to(f32) if v is not None else None
    kposf = kpos.to(f32)
    if causal:
        cols = [vf] if vf is not None else []
        v_ext = torch.cat(cols + [kposf[:, None, :, None].expand(b, hkv, nk, 1)], -1)
    # Index thresholds: number of keys whose position is below x (positions are non-decreasing).
    def below(x: torch.Tensor) -> torch.Tensor:          # x [B, R, n] -> [B, R, n]
        return torch.searchsorted(kpos.contiguous(), x.reshape(b, -1).contiguous()).view(x.shape)

    if not variant:
        # Visible-key and valid-query counts have closed forms without variant masks.
        if causal:
            ncum = kvalid.long().cumsum(-1)
            nvis_all = ncum[:, off:].to(f32)                                 # [B, Nq]
            qcount = torch.flip(torch.flip(qvalid.long(), [-1]).cumsum(-1), [-1])  # valid q with idx >= i
            jq = (torch.arange(nk, device=dev) - off).clamp(min=0)
            nq_all = torch.where(torch.arange(nk, device=dev) - off < nq, qcount[:, jq.clamp(max=nq - 1)],
                                 torch.zeros((), dtype=torch.long, device=dev))
        else:
            nvis_all = kvalid.sum(-1, keepdim=True).expand(b, nq).to(f32)
            nq_all = qvalid.sum(-1, keepdim=True).expand(b, nk)
        nvis[:] = nvis_all[:, None]
        nqry[:] = (nq_all * kvalid).to(f32)[:, None]

    # Key-index thresholds of every position-based mass, for all rows at once: the mass of keys at
    # positions in [x, y) is C[below(y) - 1] - C[below(x) - 1] on the row cumsum C.
    qp3 = qpos[:, :, None]                                                     # [B, Nq, 1]
    lo_hi = torch.tensor(bins, device=dev).clamp(max=1 << 40)                 # [n_bins, 2]
    t_all = below(torch.cat([
        torch.full_like(qp3, 1), torch.full_like(qp3, S),                      # sink0, sinkS
        qp3 - 1, qp3,                                                          # prev
        qp3 - W + 1, qp3 + W,                                                  # local
        qp3 - lo_hi[None, None, :, 1] + 1, qp3 - lo_hi[None, None, :, 0] + 1,  # left bins
        qp3 + lo_hi[None, None, :, 0], qp3 + lo_hi[None, None, :, 1],          # right bins
    ], -1))
    rows = min(rows_per_chunk(b, h, nk, pool, config.mem_budget_mb), -(-nq // pool) * pool)
    tri = None
    for a in range(0, nq, rows):
        e = min(nq, a + rows)
        rr = e - a
        kend = min(nk, e + off) if causal else nk
        if kend <= 0:
            continue
        qc = (q[:, :, a:e].to(f32) * scale).reshape(b, hkv, g * rr, d)
        s = torch.matmul(qc, kf[:, :, :kend].transpose(-1, -2)).view(b, hkv, g, rr, kend)
        qp = qpos[:, a:e]                                                     # [B, rr]
        vis = None
        if variant is not None or not all_valid:
            vis = kvalid[:, None, None, None, :kend].clone()
            if causal:
                i = torch.arange(a, e, device=dev)[:, None] + off
                vis = vis & (torch.arange(kend, device=dev)[None, :] <= i)
            if variant is not None:
                if variant.window is not None:
                    dd = qp[:, :, None] - kpos[:, None, :kend]
                    keep = (dd < variant.window) & (-dd < variant.window)
                    if variant.sink_keep:
                        keep = keep | (kpos[:, None, :kend] < variant.sink_keep)
                    vis = vis & keep[:, None, None]
                if variant.block_mask is not None:
                    bm = variant.block_mask.to(dev).view(b, hkv, g, *variant.block_mask.shape[-2:])
                    qi = torch.arange(a, e, device=dev) // variant.block_q
                    kj = torch.arange(kend, device=dev) // variant.block_k
                    vis = vis & bm[:, :, :, qi][..., kj]
                if variant.row_threshold is not None:
                    thr = variant.row_threshold[:, :, a:e].to(dev, f32).view(b, hkv, g, rr, 1)
                    vis = vis & (s >= thr)
            s.masked_fill_(~vis, NEG)
            cnt = vis.expand(b, hkv, g, rr, kend).sum(-1).to(f32)
            nvis[:, :, a:e] = cnt.view(b, h, rr)
            qv = qvalid[:, a:e].view(b, 1, 1, rr, 1)
            if variant is not None:
                nqry[:, :, :kend] += (vis & qv).expand(b, hkv, g, rr, kend).sum(-2).to(f32).view(b, h, kend)
        elif causal:
            # Only the last rr x rr block of this chunk crosses the diagonal.
            if tri is None or tri.shape[0] < rr:
                tri = torch.ones(rows, rows, dtype=torch.bool, device=dev).triu_(1)
            s[..., kend - rr:].masked_fill_(tri[:rr, :rr], NEG)
        has = nvis[:, :, a:e].view(b, hkv, g, rr) > 0
        m, idx = s.max(-1, keepdim=True)
        top1i[:, :, a:e] = torch.where(has, idx.squeeze(-1), -1).view(b, h, rr)
        s.sub_(m)                        # centred logits: the entropy sum has no large cancellation
        p = torch.softmax(s, -1)
        u = torch.einsum("...k,...k->...", p, s)                             # sum_j p_ij (s_ij - m_i)
        del s
        log_l = -torch.log(p.gather(-1, idx)).squeeze(-1)                    # max p = 1 / l
        lse_c = m.squeeze(-1) + log_l
        ent_c = log_l - u
        if not bool(has.all()):
            p.mul_(has.unsqueeze(-1))
            lse_c = torch.where(has, lse_c, torch.full((), float("-inf"), device=dev))
            ent_c = torch.where(has, ent_c, torch.zeros((), device=dev))
        lse[:, :, a:e] = lse_c.view(b, h, rr)
        ent[:, :, a:e] = ent_c.view(b, h, rr)
        top1p[:, :, a:e] = torch.where(has, torch.exp(-log_l), torch.zeros((), device=dev)).view(b, h, rr)
        if retained is not None:
            lf = variant.lse_full[:, :, a:e].to(dev, f32).view(b, hkv, g, rr)
            retained[:, :, a:e] = torch.where(has, torch.exp(lse_c - lf), torch.zeros((), device=dev)).view(b, h, rr)

        p2 = p.view(b, hkv, g * rr, kend)
        if causal:
            # One matmul gives the output and E[kpos] (key positions ride along as an extra V column);
            # all visible keys precede the query, so E|qpos - kpos| = qpos - E[kpos].
            pv_ext = torch.matmul(p2, v_ext[:, :, :kend]).view(b, hkv, g, rr, -1)
            if out is not None:
                out[:, :, a:e] = pv_ext[..., :-1].reshape(b, h, rr, -1).to(q.dtype)
            ed = qp.to(f32)[:, None, None] - pv_ext[..., -1]
            edist[:, :, a:e] = (ed * has).view(b, h, rr)
        else:
            if out is not None:
                out[:, :, a:e] = torch.matmul(p2, vf[:, :, :kend]).view(b, h, rr, -1).to(q.dtype)
            absd = (qp[:, :, None] - kpos[:, None, :kend]).abs().to(f32)[:, None, None]
            edist[:, :, a:e] = torch.einsum("...k,...k->...", p, absd.expand_as(p)).view(b, h, rr)
        if maps is not None:
            maps[:, :, a:e, :kend] = p.view(b, h, rr, kend)

        qrow = None if bool(qvalid[:, a:e].all()) else qvalid[:, a:e].to(f32).view(b, 1, 1, rr, 1)
        pv = p if qrow is None else p * qrow
        colsum[:, :, :kend] += pv.sum(-2).view(b, h, kend)
        # Pooled maps: reduce keys first (one pass), then rows in groups of `pool` (small tensors).
        ks = _block_reduce(pv, pool, "sum")                                # [.., rr, mk_c]
        km = _block_reduce(pv, pool, "max")
        qa = a // pool
        mk_c = ks.shape[-1]
        psum[:, :, qa:qa + -(-rr // pool), :mk_c] = _block_reduce(ks.transpose(-1, -2), pool, "sum") \
            .transpose(-1, -2).reshape(b, h, -1, mk_c)
        pmax[:, :, qa:qa + -(-rr // pool), :mk_c] = _block_reduce(km.transpose(-1, -2), pool, "max") \
            .transpose(-1, -2).reshape(b, h, -1, mk_c)
        del pv, ks, km

        # Position-based masses from the row cumsum (in place: p is not needed any more).
        c = p.cumsum_(-1)
        t = t_all[:, a:e][:, None, None]                                       # [B,1,1,rr,n]
        mb = _mass_below(c, t)
        nb = len(bins)
        sink0[:, :, a:e] = mb[..., 0].reshape(b, h, rr)
        sink_s[:, :, a:e] = mb[..., 1].reshape(b, h, rr)
        prev[:, :, a:e] = (mb[..., 3] - mb[..., 2]).reshape(b, h, rr)
        local[:, :, a:e] = (mb[..., 5] - mb[..., 4]).reshape(b, h, rr)
        left = mb[..., 6 + nb:6 + 2 * nb] - mb[..., 6:6 + nb]
        right = mb[..., 6 + 3 * nb:6 + 4 * nb] - mb[..., 6 + 2 * nb:6 + 3 * nb]
        right[..., 0] = 0                                                      # d = 0 counted once
        per_row = left + right
        if qrow is not None:
            per_row = per_row * qrow
        hist += per_row.sum(-2).reshape(b, h, nb)
        del c, p

    # Pooled mean: divide block sums by (#valid query rows in the block) x (#keys in the block).
    nvr = torch.stack([qvalid[:, i * pool:(i + 1) * pool].sum(-1) for i in range(mq)], -1).to(f32)
    ncols = torch.tensor([min(nk, (c + 1) * pool) - c * pool for c in range(mk)], dtype=f32, device=dev)
    pmean = psum / (nvr[:, None, :, None] * ncols).clamp(min=1)
    return AttentionStats(out=out, lse=lse, entropy=ent, n_visible=nvis, sink0=sink0, sink_s=sink_s,
                          top1_idx=top1i, top1_prob=top1p, prev_mass=prev, local_mass=local,
                          exp_dist=edist, colsum=colsum, n_queries=nqry, pooled_mean=pmean,
                          pooled_max=pmax, dist_hist=hist, pool=pool, maps=maps, retained=retained)
