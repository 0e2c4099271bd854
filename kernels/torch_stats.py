"""Exact chunked attention statistics in torch: the CPU backend and the Triton kernels' twin.

Query rows are processed in chunks (sized to stay in cache, capped by a memory budget) against all
keys the chunk can see, so memory is O(chunk x Nk) instead of O(Nq x Nk) per head, and causal chunks
skip the keys past their last row. GQA is handled by grouping query heads under their kv head (no
repeat of K/V). On CPU the per-row work (softmax, argmax, entropy, E[kpos], position masses) runs in
the fused C++ kernel of cpu_rowstats when it is built, else in torch ops; both give the same numbers.
Definitions live in stats_types; reference.py is the dense fp64 oracle.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .cpu_rowstats import row_kernel
from .positions import key_validity, positions, query_positions, query_validity
from .stats_types import AttentionStats, StatsConfig, VariantMask, dist_bin_edges

NEG = -1.0e30          # finite mask value: exp underflows to 0 and 0 * NEG stays 0 (no NaN)

# observer(a, e, p): p [B, H, e - a, kend] float32 holds the exact attention probabilities of query rows
# a..e-1 against keys 0..kend-1 (invisible keys and rows with no visible key are 0). Called once per
# chunk, in row order, before the chunk's buffer is reused; p must not be kept or modified. It lets
# callers reduce rows they need (sparse pairs, diagonals, region column sums) in the same pass that
# computes the statistics, instead of recomputing attention.
RowObserver = Callable[[int, int, torch.Tensor], None]


CHUNK_BYTES = 8 << 20  # one fp32 score buffer of a chunk: small enough that its ~10 passes run from cache
MIN_ROWS = 32          # fewer rows per chunk cost more in per-op overhead than they save in cache misses


def rows_per_chunk(b: int, h: int, nk: int, pool: int, budget_mb: int, n_buffers: int = 2) -> int:
    """Query rows per chunk: one fp32 [B,H,rows,Nk] buffer near CHUNK_BYTES (about 2x faster than
    256 MB budget-sized chunks on a 2-core EPYC, bench/results/engine_cpu.md), never more than n_buffers
    such buffers within the budget; a multiple of pool, or a power of two below it."""
    per_row = max(1, b * h * nk * 4)
    cap = max(1, (budget_mb << 20) // (per_row * n_buffers))
    rows = min(cap, max(MIN_ROWS, CHUNK_BYTES // per_row))
    if rows >= pool:
        return rows // pool * pool
    return 1 << (rows.bit_length() - 1)


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


ARGMAX_BLOCK = 128     # keys per block of the two-level row argmax


def _row_max(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, first index of the max) over the last dim of s [..., K], both keepdim. Two levels: the
    max of each ARGMAX_BLOCK-key block (one streaming pass, as fast as amax), then argmax over the
    blocks and inside the winning block only; max(dim) with indices is ~15x slower on CPU. The
    winning block starts at min(block * B, K - B), so a ragged tail block reads a full B keys; keys it
    shares with the previous block are below the max (else that earlier block would have won)."""
    k, bsz = s.shape[-1], ARGMAX_BLOCK
    nb = k // bsz
    if nb == 0:
        return s.max(-1, keepdim=True)
    bmax = s[..., :nb * bsz].unflatten(-1, (nb, bsz)).amax(-1)
    if nb * bsz < k:
        bmax = torch.cat([bmax, s[..., nb * bsz:].amax(-1, keepdim=True)], -1)
    m, blk = bmax.max(-1, keepdim=True)                                   # first block holding the max
    start = (blk * bsz).clamp_(max=k - bsz)
    inner = s.gather(-1, start + torch.arange(bsz, device=s.device)).argmax(-1, keepdim=True)
    return m, start + inner


def _run_row_kernel(kernel, s2d: torch.Tensor, kpos_rows: torch.Tensor, thr: torch.Tensor,
                    rows_per_batch: int, rr: int):
    """Call the C++ row kernel on s2d [R, K] (overwritten with the probabilities); see cpu_rowstats.cpp.
    Returns (max, first argmax, log sum exp(s - max), entropy, E[kpos], masses [R, T]) per row."""
    n_rows = s2d.shape[0]
    m, log_l, ent, ekpos = (torch.empty(n_rows) for _ in range(4))
    idx = torch.empty(n_rows, dtype=torch.long)
    mass = torch.empty(n_rows, thr.shape[-1])
    kernel.softmax_row_stats(s2d, kpos_rows, thr.contiguous(), rows_per_batch, rr, m, idx, log_l, ent, ekpos, mass)
    return m, idx, log_l, ent, ekpos, mass


def logsumexp_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp, first argmax) of each row of x [R, K]; x may be overwritten (the fused CPU kernel
    leaves the softmax there). One pass instead of cross_entropy's log_softmax plus an argmax."""
    kernel = row_kernel() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if kernel is None:
        return torch.logsumexp(x, -1), x.argmax(-1)
    r, k = x.shape
    m, idx, log_l, *_ = _run_row_kernel(kernel, x.contiguous(), torch.zeros(1, k),
                                        torch.empty(1, r, 0, dtype=torch.long), r, r)
    return m + log_l, idx


def _fused_rows(kernel, s: torch.Tensor, kpos_rows: torch.Tensor, t_sorted: torch.Tensor,
                t_order: torch.Tensor):
    """The C++ row kernel on one chunk s [B,Hkv,G,rr,K] (overwritten with the probabilities).
    Returns (p, m, idx, log_l, entropy, E[kpos], masses at the thresholds in t_all's order)."""
    b, hkv, g, rr, k = s.shape
    m, idx, log_l, ent, ekpos, mass = _run_row_kernel(kernel, s.view(-1, k), kpos_rows, t_sorted, hkv * g * rr, rr)
    shape, n_t = (b, hkv, g, rr), mass.shape[-1]
    order = t_order[:, None, None].expand(*shape, n_t)
    mb = torch.empty(*shape, n_t).scatter_(-1, order, mass.view(*shape, n_t))
    return (s, m.view(*shape, 1), idx.view(*shape, 1), log_l.view(shape), ent.view(shape), ekpos.view(shape), mb)


def _block_bounds(a: int, rr: int, pool: int) -> list[int]:
    """Row offsets of the pool-row blocks that rows a..a+rr-1 fall in (the partition _row_blocks uses)."""
    head = min(rr, (-a) % pool)
    bounds = [0] + ([head] if head else [])
    while bounds[-1] < rr:
        bounds.append(min(rr, bounds[-1] + pool))
    return bounds


def _row_blocks_sum_max(kernel, x: torch.Tensor, a: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(_row_blocks(x, a, pool, 'sum'), _row_blocks(x, a, pool, 'max')) in one sweep of the C++ kernel."""
    *lead, rr, k = x.shape
    bounds = torch.tensor(_block_bounds(a, rr, pool), dtype=torch.long)
    nb = len(bounds) - 1
    g = x.reshape(-1, rr, k)
    rs, rm = torch.empty(g.shape[0], nb, k), torch.empty(g.shape[0], nb, k)
    kernel.block_sum_max(g, bounds, rs, rm)
    return rs.view(*lead, nb, k), rm.view(*lead, nb, k)


def _row_blocks(x: torch.Tensor, a: int, pool: int, op: str) -> torch.Tensor:
    """Reduce the rows a..a+R of x [..., R, K] within their pool-row blocks -> [..., n_blocks, K], block
    a // pool first. Reducing over rows (dim -2) streams whole key rows, far faster on CPU than
    reducing pool-wide groups of keys first; the key blocks are then reduced on the small result."""
    rr = x.shape[-2]
    red = (lambda t: t.sum(-2)) if op == "sum" else (lambda t: t.amax(-2))
    head = min(rr, (-a) % pool)
    mid = (rr - head) // pool * pool
    parts = []
    if head:
        parts.append(red(x[..., :head, :]).unsqueeze(-2))
    if mid:
        parts.append(red(x[..., head:head + mid, :].unflatten(-2, (mid // pool, pool))))
    if head + mid < rr:
        parts.append(red(x[..., head + mid:, :]).unsqueeze(-2))
    return torch.cat(parts, -2) if len(parts) > 1 else parts[0]


def attention_stats_torch(q: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor], *, scale: float,
                          causal: bool, key_valid: Optional[torch.Tensor] = None,
                          config: StatsConfig = StatsConfig(),
                          variant: Optional[VariantMask] = None,
                          observer: Optional[RowObserver] = None) -> AttentionStats:
    """q [B,H,Nq,D]; k, v [B,Hkv,Nk,D] (any strides, H a multiple of Hkv); v=None: stats only.
    observer(a, e, p) sees every chunk's exact probabilities (see RowObserver) while they are hot."""
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

    kt = k.to(f32).transpose(-1, -2).contiguous()   # [B,Hkv,D,Nk]: chunks read [D, kend] row slices
    vf = v.to(f32).contiguous() if v is not None else None
    qs = q.to(f32) * scale
    kposf = kpos.to(f32).contiguous()                                        # [B, Nk]
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
    rows = min(rows_per_chunk(b, h, nk, pool, config.mem_budget_mb), nq)
    fused = row_kernel() if dev.type == "cpu" else None
    if fused is not None:
        # The fused kernel scans each row once for all masses: thresholds in ascending order.
        t_sorted, t_order = t_all.sort(-1)
    # Score and probability buffers reused by every chunk: fresh ones per chunk (growing with kend)
    # would be fresh pages each time, and the page faults cost as much as the passes themselves.
    work = torch.empty(1 if fused is not None else 2, b * h * rows * nk, dtype=f32, device=dev)
    tri = None
    for a in range(0, nq, rows):
        e = min(nq, a + rows)
        rr = e - a
        kend = min(nk, e + off) if causal else nk
        if kend <= 0:
            continue
        qc = qs[:, :, a:e].reshape(b, hkv, g * rr, d)
        n_el = b * h * rr * kend
        s = torch.matmul(qc, kt[..., :kend], out=work[0, :n_el].view(b, hkv, g * rr, kend))
        s = s.view(b, hkv, g, rr, kend)
        p = work[-1, :n_el].view(b, hkv, g, rr, kend)     # the fused kernel writes p over s
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
        t = t_all[:, a:e][:, None, None]                                       # [B,1,1,rr,n]
        mb = ekpos = None
        if fused is not None:
            p, m, idx, log_l, ent_c, ekpos, mb = _fused_rows(fused, s, kposf, t_sorted[:, a:e], t_order[:, a:e])
        else:
            m, idx = _row_max(s)
            s.sub_(m)                    # centred logits: the entropy sum has no large cancellation
            torch.ops.aten._softmax.out(s, -1, False, out=p)
            u = torch.einsum("...k,...k->...", p, s)                         # sum_j p_ij (s_ij - m_i)
            log_l = -torch.log(p.gather(-1, idx)).squeeze(-1)                # max p = 1 / l
            ent_c = log_l - u
        del s
        top1i[:, :, a:e] = torch.where(has, idx.squeeze(-1), -1).view(b, h, rr)
        lse_c = m.squeeze(-1) + log_l
        if not bool(has.all()):
            p.mul_(has.unsqueeze(-1))
            if mb is not None:
                mb = mb * has.unsqueeze(-1)
            lse_c = torch.where(has, lse_c, torch.full((), float("-inf"), device=dev))
            ent_c = torch.where(has, ent_c, torch.zeros((), device=dev))
        if observer is not None:
            observer(a, e, p.view(b, h, rr, kend))
        lse[:, :, a:e] = lse_c.view(b, h, rr)
        ent[:, :, a:e] = ent_c.view(b, h, rr)
        top1p[:, :, a:e] = torch.where(has, torch.exp(-log_l), torch.zeros((), device=dev)).view(b, h, rr)
        if retained is not None:
            lf = variant.lse_full[:, :, a:e].to(dev, f32).view(b, hkv, g, rr)
            retained[:, :, a:e] = torch.where(has, torch.exp(lse_c - lf), torch.zeros((), device=dev)).view(b, h, rr)

        p2 = p.view(b, hkv, g * rr, kend)
        if out is not None:
            out[:, :, a:e] = torch.matmul(p2, vf[:, :, :kend]).view(b, h, rr, -1).to(q.dtype)
        if causal:
            # All visible keys precede the query, so E|qpos - kpos| = qpos - E[kpos] (one matvec).
            if ekpos is None:
                ekpos = torch.matmul(p2, kposf[:, None, :kend, None]).view(b, hkv, g, rr)
            edist[:, :, a:e] = ((qp.to(f32)[:, None, None] - ekpos) * has).view(b, h, rr)
        else:
            absd = (qp[:, :, None] - kpos[:, None, :kend]).abs().to(f32)[:, None, None]
            edist[:, :, a:e] = torch.einsum("...k,...k->...", p, absd.expand_as(p)).view(b, h, rr)
        if maps is not None:
            maps[:, :, a:e, :kend] = p.view(b, h, rr, kend)

        qrow = None if bool(qvalid[:, a:e].all()) else qvalid[:, a:e].to(f32).view(b, 1, 1, rr, 1)
        pv = p if qrow is None else p * qrow
        # Column sums and pooled maps from the sums and maxima over rows of each pool-row block (one
        # sweep in the C++ kernel, else one torch pass each); chunks may start mid-block, so blocks
        # accumulate across chunks.
        if fused is not None:
            rs, rm = _row_blocks_sum_max(fused, pv.contiguous(), a, pool)    # [.., nblk, kend]
        else:
            rs = _row_blocks(pv, a, pool, "sum")
            rm = _row_blocks(pv, a, pool, "max")
        del pv
        colsum[:, :, :kend] += rs.sum(-2).view(b, h, kend)
        ks, km = _block_reduce(rs, pool, "sum"), _block_reduce(rm, pool, "max")
        qa, nblk, mk_c = a // pool, ks.shape[-2], ks.shape[-1]
        psum[:, :, qa:qa + nblk, :mk_c] += ks.reshape(b, h, nblk, mk_c)
        blk = pmax[:, :, qa:qa + nblk, :mk_c]
        torch.maximum(blk, km.reshape(b, h, nblk, mk_c), out=blk)
        del rs, rm, ks, km

        if mb is None:
            # Position-based masses from the row cumsum (in place: p is not needed any more).
            mb = _mass_below(p.cumsum_(-1), t)
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
        del p

    # Pooled mean: divide block sums by (#valid query rows in the block) x (#keys in the block).
    nvr = torch.stack([qvalid[:, i * pool:(i + 1) * pool].sum(-1) for i in range(mq)], -1).to(f32)
    ncols = torch.tensor([min(nk, (c + 1) * pool) - c * pool for c in range(mk)], dtype=f32, device=dev)
    pmean = psum / (nvr[:, None, :, None] * ncols).clamp(min=1)
    return AttentionStats(out=out, lse=lse, entropy=ent, n_visible=nvis, sink0=sink0, sink_s=sink_s,
                          top1_idx=top1i, top1_prob=top1p, prev_mass=prev, local_mass=local,
                          exp_dist=edist, colsum=colsum, n_queries=nqry, pooled_mean=pmean,
                          pooled_max=pmax, dist_hist=hist, pool=pool, maps=maps, retained=retained)
