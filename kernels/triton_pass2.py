"""Pass 2: key-major column statistics (the loop structure of the FlashAttention backward dK/dV kernel).

One program per (key block, b*H + h). The K block stays resident; the loop walks the query blocks that
can see it and recomputes p = exp2(s - lse2) from pass 1's base-2 logsumexp, so probabilities are
exactly normalised without any cross-program reduction. Per program it writes

  colsum[j], n_queries[j]   attention received by key j from valid query rows (and their count)
  pooled partial cells      sum and max of p over [PQ rows x PK keys] cells, PQ | BLOCK_M, PK | BLOCK_N
  distance histogram        this key block's share of the |qpos - kpos| histogram

Every output element has exactly one writer (no atomics), so results are deterministic; the host
reduces the partial cells to the [ceil(Nq/P), ceil(Nk/P)] pooled map and sums the histogram shares.
Query rows that are padding (left padding: key_valid of their own position is False) contribute to
nothing here, as stats_types defines.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_pass1 import _load_tile


@triton.jit
def _dist_bin(ad, NB: tl.constexpr):
    """Histogram bin of a non-negative integer distance: 0 for d = 0, k for 2^(k-1) <= d < 2^k,
    capped at NB - 1. floor(log2 d) is read off the fp32 exponent (exact for d < 2^24)."""
    e = ((ad.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    return tl.where(ad == 0, 0, tl.minimum(e + 1, NB - 1))


@triton.jit
def _p2_tile(col, cnt, hist, k, kpos, kval, kp_lo, kp_hi, offs_n, pid_n, qt, b64, pid_bh, Nq, Nk, off,
             q_base, stride_qm, stride_qd, LSE2, KVALID, KPOS, tau_base, stride_tm,
             bm_base, stride_bmq, stride_bmk, BQ, BK, PSUM, PMAX, NKC, MAPS, stride_mm, stride_mn,
             qk_scale, scale, WIN, SINK_KEEP, D,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             PQ: tl.constexpr, PK: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
             MASKED: tl.constexpr, NEED_MASK: tl.constexpr, KEY_MASK: tl.constexpr,
             CAUSAL: tl.constexpr, HAS_KVALID: tl.constexpr, USE_WINDOW: tl.constexpr,
             USE_BLOCK: tl.constexpr, USE_THR: tl.constexpr, COUNT: tl.constexpr,
             FULL_MAPS: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    start_m = qt * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    qT = _load_tile(q_base + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                    offs_d < D, m_ok, not EVEN_D, MASKED)
    # rows past Nq read lse = +inf, so their p is exactly 0 even before masking
    lse = tl.load(LSE2 + pid_bh.to(tl.int64) * Nq + offs_m, mask=m_ok, other=float("inf"))
    qk = tl.dot(k, qT, input_precision=PREC)          # [BLOCK_N keys, BLOCK_M queries]
    s = qk * qk_scale
    if HAS_KVALID:
        qpos = tl.load(KPOS + b64 * Nk + off + offs_m, mask=m_ok, other=0)
        qv = tl.load(KVALID + b64 * Nk + off + offs_m, mask=m_ok, other=0) != 0
    else:
        qpos = offs_m + off
        qv = m_ok
    d = qpos[None, :] - kpos[:, None]
    if NEED_MASK:
        # the same visibility predicate as pass 1, transposed (rows = keys, columns = queries)
        vis = (offs_n[:, None] >= 0) & m_ok[None, :]
        if KEY_MASK:
            vis = vis & kval[:, None]
        if MASKED:
            if CAUSAL:
                vis = vis & (offs_n[:, None] <= offs_m[None, :] + off)
        if USE_WINDOW:
            keep = (d < WIN) & (d > -WIN)
            keep = keep | ((kpos[:, None] >= 0) & (kpos[:, None] < SINK_KEEP))
            vis = vis & keep
        if USE_BLOCK:
            bmv = tl.load(bm_base + (offs_m // BQ)[None, :] * stride_bmq + (offs_n // BK)[:, None] * stride_bmk,
                          mask=m_ok[None, :] & (offs_n < Nk)[:, None], other=0)
            vis = vis & (bmv != 0)
        if USE_THR:
            tau = tl.load(tau_base + offs_m * stride_tm, mask=m_ok, other=0.0)
            vis = vis & ((qk * scale) >= tau[None, :])
        p = tl.where(vis, tl.exp2(s - lse[None, :]), 0.0)
    else:
        p = tl.exp2(s - lse[None, :])
    if FULL_MAPS:
        tl.store(MAPS + offs_m[None, :] * stride_mm + offs_n[:, None] * stride_mn, p,
                 mask=m_ok[None, :] & (offs_n < Nk)[:, None])
    if HAS_KVALID:
        # column statistics only count valid (non-padding) query rows
        p = tl.where(qv[None, :], p, 0.0)
    tcol = tl.sum(p, 1)
    col += tcol
    if COUNT:
        cnt += tl.sum((vis & qv[None, :]).to(tl.float32), 1)

    # pooled partial cells: PQ x PK cells tile the [BLOCK_N, BLOCK_M] block exactly
    if PK == BLOCK_N and PQ == BLOCK_M:
        tl.store(PSUM + (pid_bh.to(tl.int64) * tl.cdiv(Nq, BLOCK_M) + qt) * NKC + pid_n, tl.sum(tcol, 0))
        tl.store(PMAX + (pid_bh.to(tl.int64) * tl.cdiv(Nq, BLOCK_M) + qt) * NKC + pid_n, tl.max(tl.max(p, 1), 0))
    else:
        p4 = tl.reshape(p, [BLOCK_N // PK, PK, BLOCK_M // PQ, PQ])
        csum = tl.sum(tl.sum(p4, 3), 1)
        cmax = tl.max(tl.max(p4, 3), 1)
        ck = pid_n * (BLOCK_N // PK) + tl.arange(0, BLOCK_N // PK)
        cq = qt * (BLOCK_M // PQ) + tl.arange(0, BLOCK_M // PQ)
        ptr = (pid_bh.to(tl.int64) * (tl.cdiv(Nq, BLOCK_M) * (BLOCK_M // PQ)) + cq[None, :]) * NKC + ck[:, None]
        tl.store(PSUM + ptr, csum)
        tl.store(PMAX + ptr, cmax)

    # distance histogram: bound |d| over the tile from the (monotone) position ends; far from the
    # diagonal the whole tile falls in one log bin and its total mass is added at once
    qp_lo = tl.load(KPOS + b64 * Nk + off + start_m)
    qp_hi = tl.load(KPOS + b64 * Nk + off + tl.minimum(start_m + BLOCK_M, Nq) - 1)
    dmin = qp_lo - kp_hi
    dmax = qp_hi - kp_lo
    admin = tl.where(dmin > 0, dmin, tl.where(dmax < 0, -dmax, 0))
    admax = tl.maximum(dmax, -dmin)
    blo = _dist_bin(admin, NB)
    bhi = _dist_bin(admax, NB)
    bins = tl.arange(0, NBP)
    if blo == bhi:
        hist += tl.where(bins == blo, tl.sum(tcol, 0), 0.0)
    else:
        eb = _dist_bin(tl.abs(d), NB)
        for bb in range(blo, bhi + 1):
            hist += tl.where(bins == bb, tl.sum(tl.sum(tl.where(eb == bb, p, 0.0), 1), 0), 0.0)
    return col, cnt, hist


@triton.jit
def _p2_zero_cells(PSUM, PMAX, pid_bh, pid_n, qt, Nq, NKC,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PQ: tl.constexpr, PK: tl.constexpr):
    # query blocks entirely before this key block (causal) still own their cells: write zeros
    ck = pid_n * (BLOCK_N // PK) + tl.arange(0, BLOCK_N // PK)
    cq = qt * (BLOCK_M // PQ) + tl.arange(0, BLOCK_M // PQ)
    ptr = (pid_bh.to(tl.int64) * (tl.cdiv(Nq, BLOCK_M) * (BLOCK_M // PQ)) + cq[None, :]) * NKC + ck[:, None]
    z = tl.zeros([BLOCK_N // PK, BLOCK_M // PQ], tl.float32)
    tl.store(PSUM + ptr, z)
    tl.store(PMAX + ptr, z)


@triton.jit
def _pass2_kernel(Q, K, LSE2, KVALID, KPOS, TAU, BMASK, COLSUM, NQRY, HIST, PSUM, PMAX, MAPS,
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_tb, stride_th, stride_tm,
                  stride_bmb, stride_bmh, stride_bmq, stride_bmk,
                  stride_mb, stride_mh, stride_mm, stride_mn,
                  H, G, Nq, Nk, D, NKC, qk_scale, scale, WIN, SINK_KEEP, BQ, BK,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  PQ: tl.constexpr, PK: tl.constexpr, NB: tl.constexpr, NBP: tl.constexpr,
                  NEED_INNER: tl.constexpr, KEY_MASK: tl.constexpr, CAUSAL: tl.constexpr,
                  HAS_KVALID: tl.constexpr, USE_WINDOW: tl.constexpr, USE_BLOCK: tl.constexpr,
                  USE_THR: tl.constexpr, COUNT: tl.constexpr, FULL_MAPS: tl.constexpr,
                  PREC: tl.constexpr, EVEN_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    b64 = b.to(tl.int64)
    off = Nk - Nq
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Nk
    k = _load_tile(K + b64 * stride_kb + hk.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn
                   + offs_d[None, :] * stride_kd, n_ok, offs_d < D, True, not EVEN_D)
    last_n = tl.minimum(start_n + BLOCK_N, Nk) - 1
    if HAS_KVALID:
        kpos = tl.load(KPOS + b64 * Nk + offs_n, mask=n_ok, other=0)
        kval = n_ok & (tl.load(KVALID + b64 * Nk + offs_n, mask=n_ok, other=0) != 0)
    else:
        kpos = offs_n
        kval = n_ok
    kp_lo = tl.load(KPOS + b64 * Nk + start_n)
    kp_hi = tl.load(KPOS + b64 * Nk + last_n)
    q_base = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
    tau_base = TAU + b64 * stride_tb + h * stride_th
    bm_base = BMASK + b64 * stride_bmb + h * stride_bmh
    maps_base = MAPS + b64 * stride_mb + h.to(tl.int64) * stride_mh

    col = tl.zeros([BLOCK_N], tl.float32)
    cnt = tl.zeros([BLOCK_N], tl.float32)
    hist = tl.zeros([NBP], tl.float32)
    n_qt = tl.cdiv(Nq, BLOCK_M)
    q_full = Nq // BLOCK_M
    if CAUSAL:
        # first query block that sees any key of the block, first one that sees all of them
        q_lo = tl.maximum(start_n - off, 0) // BLOCK_M
        q_mid = tl.minimum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - off, 0), BLOCK_M), q_full)
    else:
        q_lo = 0
        q_mid = 0
    for qt in range(0, q_lo):
        _p2_zero_cells(PSUM, PMAX, pid_bh, pid_n, qt, Nq, NKC, BLOCK_M, BLOCK_N, PQ, PK)
    for qt in range(q_lo, q_mid):
        col, cnt, hist = _p2_tile(
            col, cnt, hist, k, kpos, kval, kp_lo, kp_hi, offs_n, pid_n, qt, b64, pid_bh, Nq, Nk, off,
            q_base, stride_qm, stride_qd, LSE2, KVALID, KPOS, tau_base, stride_tm,
            bm_base, stride_bmq, stride_bmk, BQ, BK, PSUM, PMAX, NKC, maps_base, stride_mm, stride_mn,
            qk_scale, scale, WIN, SINK_KEEP, D, BLOCK_M, BLOCK_N, BLOCK_D, PQ, PK, NB, NBP,
            True, True, KEY_MASK, CAUSAL, HAS_KVALID, USE_WINDOW, USE_BLOCK, USE_THR, COUNT,
            FULL_MAPS, PREC, EVEN_D)
    for qt in range(q_mid, q_full):
        col, cnt, hist = _p2_tile(
            col, cnt, hist, k, kpos, kval, kp_lo, kp_hi, offs_n, pid_n, qt, b64, pid_bh, Nq, Nk, off,
            q_base, stride_qm, stride_qd, LSE2, KVALID, KPOS, tau_base, stride_tm,
            bm_base, stride_bmq, stride_bmk, BQ, BK, PSUM, PMAX, NKC, maps_base, stride_mm, stride_mn,
            qk_scale, scale, WIN, SINK_KEEP, D, BLOCK_M, BLOCK_N, BLOCK_D, PQ, PK, NB, NBP,
            False, NEED_INNER, KEY_MASK, CAUSAL, HAS_KVALID, USE_WINDOW, USE_BLOCK, USE_THR, COUNT,
            FULL_MAPS, PREC, EVEN_D)
    for qt in range(tl.maximum(q_full, q_lo), n_qt):
        col, cnt, hist = _p2_tile(
            col, cnt, hist, k, kpos, kval, kp_lo, kp_hi, offs_n, pid_n, qt, b64, pid_bh, Nq, Nk, off,
            q_base, stride_qm, stride_qd, LSE2, KVALID, KPOS, tau_base, stride_tm,
            bm_base, stride_bmq, stride_bmk, BQ, BK, PSUM, PMAX, NKC, maps_base, stride_mm, stride_mn,
            qk_scale, scale, WIN, SINK_KEEP, D, BLOCK_M, BLOCK_N, BLOCK_D, PQ, PK, NB, NBP,
            True, True, KEY_MASK, CAUSAL, HAS_KVALID, USE_WINDOW, USE_BLOCK, USE_THR, COUNT,
            FULL_MAPS, PREC, EVEN_D)
    tl.store(COLSUM + pid_bh.to(tl.int64) * Nk + offs_n, col, mask=n_ok)
    if COUNT:
        tl.store(NQRY + pid_bh.to(tl.int64) * Nk + offs_n, cnt, mask=n_ok)
    tl.store(HIST + (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_n) * NBP + tl.arange(0, NBP), hist)
