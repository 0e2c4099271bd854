"""Pass 1: query-major instrumented attention forward (FlashAttention-2 structure).

One program per (query block, b*H + h). The Q block stays in registers while the loop walks the
key/value blocks with an online softmax in base 2 (scale * log2(e) folded into the logits). Next to
the output O and the logsumexp it keeps, per query row, running sums that are rescaled by the same
alpha = exp2(m_old - m_new) as l and O, so every statistic is exact after one sweep:

  u    = sum p~ (s - m)          (entropy, max-centred: every term <= 0, no lse - mean(s) cancellation)
  ed   = sum p~ |qpos - kpos|    (expected distance)
  sink0/sinkS/prev/local         (position-selected masses, only on the few key blocks that can hold them)
  top1 index                     (first key that attains the running max)

Masking uses -inf with a safe pivot (m = 0 while a row has seen nothing), so fully masked rows and
rows of all -inf never produce 0 * inf. The semantics are those of kernels/stats_types.py; the exact
twin is kernels/torch_stats.py.

Layout: q [B,H,Nq,D], k [B,Hkv,Nk,D], v [B,Hkv,Nk,DV], any strides (the HF layout as it arrives).
Queries are the last Nq keys (offset = Nk - Nq). Positions count valid keys only: kpos is an int32
[B,Nk] table built on the host (cumsum(valid) - 1), and qpos_i = kpos[i + offset].
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Planes of the fp32 row-statistics buffer RS[NPLANES, B*H*Nq] (lse2 is the base-2 logsumexp).
PLANES = ("lse2", "entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass", "local_mass",
          "exp_dist", "retained")
NPLANES = len(PLANES)
# kernel-side names must be tl.constexpr to be readable as globals inside @triton.jit
P_LSE2, P_ENT, P_NVIS, P_SINK0, P_SINKS, P_TOP1P, P_PREV, P_LOCAL, P_EDIST, P_RET = (
    tl.constexpr(i) for i in range(NPLANES))


@triton.jit
def _load_tile(ptrs, ok0, ok1, MASK0: tl.constexpr, MASK1: tl.constexpr):
    """2-D load that applies only the masks that can be false: interior, full-width tiles load
    unmasked (ok0 masks dim 0, ok1 dim 1; masked elements read 0)."""
    if MASK0:
        if MASK1:
            x = tl.load(ptrs, mask=ok0[:, None] & ok1[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=ok0[:, None], other=0.0)
    else:
        if MASK1:
            x = tl.load(ptrs, mask=ok1[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _p1_tile(acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i,
             q, qpos, tau, offs_m, start_n, Nq, Nk, off,
             k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
             kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
             mass_lo, band_lo, band_hi,
             qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, NEED_MASK: tl.constexpr,
             CAUSAL: tl.constexpr, HAS_KVALID: tl.constexpr, USE_WINDOW: tl.constexpr,
             USE_BLOCK: tl.constexpr, BLOCK_SKIP: tl.constexpr, USE_THR: tl.constexpr,
             STATS: tl.constexpr, WRITE_O: tl.constexpr, COUNT: tl.constexpr, PREC: tl.constexpr,
             EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Nk
    # K^T tile [BLOCK_D, BLOCK_N]; only the boundary stage needs the key-range mask
    kT = _load_tile(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    offs_d < D, n_ok, not EVEN_D, MASKED)
    qk = tl.dot(q, kT, input_precision=PREC)
    s = qk * qk_scale
    if HAS_KVALID and (STATS or USE_WINDOW):      # positions skip invalid keys
        kpos = tl.load(kpos_base + offs_n, mask=n_ok, other=0)
    else:
        kpos = offs_n
    if NEED_MASK:
        vis = (offs_m[:, None] >= 0) & n_ok[None, :]
        if MASKED:
            if CAUSAL:
                vis = vis & (offs_n[None, :] <= offs_m[:, None] + off)
        if HAS_KVALID:
            kv = tl.load(kval_base + offs_n, mask=n_ok, other=0)
            vis = vis & (kv[None, :] != 0)
        if USE_WINDOW:
            dw = qpos[:, None] - kpos[None, :]
            keep = (dw < WIN) & (dw > -WIN)
            keep = keep | ((kpos[None, :] >= 0) & (kpos[None, :] < SINK_KEEP))
            vis = vis & keep
        if USE_BLOCK:
            if not BLOCK_SKIP:  # tile straddles mask blocks: gather the mask per element
                bmv = tl.load(bm_base + (offs_m // BQ)[:, None] * stride_bmq + (offs_n // BK)[None, :] * stride_bmk,
                              mask=(offs_m[:, None] < Nq) & n_ok[None, :], other=0)
                vis = vis & (bmv != 0)
        if USE_THR:
            # the natural-unit logit, as the threshold is defined (kept iff s >= tau_i)
            vis = vis & ((qk * scale) >= tau[:, None])
        s = tl.where(vis, s, float("-inf"))
    m_t = tl.max(s, 1)
    m_new = tl.maximum(m_i, m_t)
    # safe pivot: a row with nothing visible yet keeps m = -inf but exponentiates against 0
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    if WRITE_O:
        offs_dv = tl.arange(0, BLOCK_DV)
        vt = _load_tile(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        n_ok, offs_dv < DV, MASKED, not EVEN_DV)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
    if STATS:
        x = s - m_use[:, None]
        if NEED_MASK:
            x = tl.where(vis, x, 0.0)      # masked: p = 0 but x = -inf
        # move the centre of u from m_old to m_new (l_i = 0 while m_old = -inf: skip the -inf * 0)
        corr = tl.where(l_i > 0, (m_i - m_use) * l_i, 0.0)
        u_i = alpha * (u_i + corr) + tl.sum(p * x, 1)
        d = qpos[:, None] - kpos[None, :]
        if CAUSAL:
            ad = d                      # visible keys never lie after the query
        else:
            ad = tl.abs(d)
        ed_i = ed_i * alpha + tl.sum(p * ad.to(tl.float32), 1)
        # strict '>' keeps the earliest key on ties, as torch.argmax does
        top_i = tl.where(m_t > m_i, start_n + tl.argmax(s, 1), top_i)
        s0_i = s0_i * alpha
        ss_i = ss_i * alpha
        pv_i = pv_i * alpha
        lc_i = lc_i * alpha
        # sink keys sit in the first blocks and prev/local keys in a band around the query block
        if (start_n < mass_lo) | ((start_n + BLOCK_N > band_lo) & (start_n < band_hi)):
            s0_i += tl.sum(tl.where(kpos[None, :] == 0, p, 0.0), 1)
            ss_i += tl.sum(tl.where((kpos[None, :] >= 0) & (kpos[None, :] < S), p, 0.0), 1)
            pv_i += tl.sum(tl.where(d == 1, p, 0.0), 1)
            lc_i += tl.sum(tl.where((d < LW) & (d > -LW), p, 0.0), 1)
        if COUNT:
            cnt_i += tl.sum(vis.to(tl.float32), 1)
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, m_new, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i


@triton.jit
def _p1_range(acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i, lo, hi,
              q, qpos, tau, offs_m, start_m, Nq, Nk, off,
              k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
              kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
              mass_lo, band_lo, band_hi, qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, NEED_MASK: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_KVALID: tl.constexpr, USE_WINDOW: tl.constexpr,
              USE_BLOCK: tl.constexpr, BLOCK_SKIP: tl.constexpr, USE_THR: tl.constexpr,
              STATS: tl.constexpr, WRITE_O: tl.constexpr, COUNT: tl.constexpr, PREC: tl.constexpr,
              EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        if USE_BLOCK and BLOCK_SKIP:
            # the tile lies inside one mask block: one flag decides the whole tile
            keep = tl.load(bm_base + (start_m // BQ) * stride_bmq + (start_n // BK) * stride_bmk)
            if keep != 0:
                acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i = _p1_tile(
                    acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i,
                    q, qpos, tau, offs_m, start_n, Nq, Nk, off,
                    k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
                    kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
                    mass_lo, band_lo, band_hi, qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
                    BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, MASKED, NEED_MASK, CAUSAL, HAS_KVALID,
                    USE_WINDOW, USE_BLOCK, BLOCK_SKIP, USE_THR, STATS, WRITE_O, COUNT, PREC, EVEN_D, EVEN_DV)
        else:
            acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i = _p1_tile(
                acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i,
                q, qpos, tau, offs_m, start_n, Nq, Nk, off,
                k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
                kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
                mass_lo, band_lo, band_hi, qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
                BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, MASKED, NEED_MASK, CAUSAL, HAS_KVALID,
                USE_WINDOW, USE_BLOCK, BLOCK_SKIP, USE_THR, STATS, WRITE_O, COUNT, PREC, EVEN_D, EVEN_DV)
    return acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i


@triton.jit
def _pass1_kernel(Q, K, V, O, RS, TOP, KVALID, KPOS, BAND_LO, BAND_HI, MASS_END, TAU, BMASK, LSE_FULL,
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_ob, stride_oh, stride_om, stride_od,
                  stride_tb, stride_th, stride_tm,
                  stride_bmb, stride_bmh, stride_bmq, stride_bmk,
                  stride_lb, stride_lh, stride_lm,
                  H, G, Nq, Nk, D, DV, PLANE,
                  qk_scale, scale, S, LW, WIN, SINK_KEEP, BQ, BK,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KVALID: tl.constexpr,
                  USE_WINDOW: tl.constexpr, USE_BLOCK: tl.constexpr, BLOCK_SKIP: tl.constexpr,
                  USE_THR: tl.constexpr, HAS_LSE_FULL: tl.constexpr, STATS: tl.constexpr,
                  WRITE_O: tl.constexpr, COUNT: tl.constexpr, NEED_INNER: tl.constexpr,
                  PREC: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G                       # GQA: query head h reads kv head h // G (HF repeat_kv)
    b64 = b.to(tl.int64)
    off = Nk - Nq
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Nq
    q = _load_tile(Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm
                   + offs_d[None, :] * stride_qd, row_ok, offs_d < D, True, not EVEN_D)
    k_base = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    kval_base = KVALID + b64 * Nk
    kpos_base = KPOS + b64 * Nk
    if HAS_KVALID:
        qpos = tl.load(kpos_base + off + offs_m, mask=row_ok, other=0)
    else:
        qpos = offs_m + off
    if USE_THR:
        tau = tl.load(TAU + b64 * stride_tb + h * stride_th + offs_m * stride_tm, mask=row_ok, other=0.0)
    else:
        tau = 0.0
    bm_base = BMASK + b64 * stride_bmb + h * stride_bmh
    if STATS:
        # key-index ranges (host tables, per query row; monotone, so the block's ends bound them)
        mass_lo = tl.load(MASS_END + b)
        band_lo = tl.load(BAND_LO + b64 * Nq + start_m)
        band_hi = tl.load(BAND_HI + b64 * Nq + tl.minimum(start_m + BLOCK_M, Nq) - 1)
    else:
        mass_lo = 0
        band_lo = 0
        band_hi = 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    u_i = tl.zeros([BLOCK_M], tl.float32)
    ed_i = tl.zeros([BLOCK_M], tl.float32)
    s0_i = tl.zeros([BLOCK_M], tl.float32)
    ss_i = tl.zeros([BLOCK_M], tl.float32)
    pv_i = tl.zeros([BLOCK_M], tl.float32)
    lc_i = tl.zeros([BLOCK_M], tl.float32)
    cnt_i = tl.zeros([BLOCK_M], tl.float32)
    top_i = tl.full([BLOCK_M], -1, tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Stage split: key blocks every row of this query block sees in full (no range/causal mask),
    # then the diagonal and ragged-tail blocks with masks.
    if CAUSAL:
        hi = tl.minimum(Nk, start_m + BLOCK_M + off)
        mid = tl.minimum((start_m + off + 1) // BLOCK_N * BLOCK_N, Nk // BLOCK_N * BLOCK_N)
    else:
        hi = Nk
        mid = Nk // BLOCK_N * BLOCK_N
    acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i = _p1_range(
        acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i, 0, mid,
        q, qpos, tau, offs_m, start_m, Nq, Nk, off,
        k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
        kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
        mass_lo, band_lo, band_hi, qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
        BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, False, NEED_INNER, CAUSAL, HAS_KVALID,
        USE_WINDOW, USE_BLOCK, BLOCK_SKIP, USE_THR, STATS, WRITE_O, COUNT, PREC, EVEN_D, EVEN_DV)
    acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i = _p1_range(
        acc, m_i, l_i, u_i, ed_i, s0_i, ss_i, pv_i, lc_i, cnt_i, top_i, mid, hi,
        q, qpos, tau, offs_m, start_m, Nq, Nk, off,
        k_base, stride_kn, stride_kd, v_base, stride_vn, stride_vd,
        kval_base, kpos_base, bm_base, stride_bmq, stride_bmk, BQ, BK,
        mass_lo, band_lo, band_hi, qk_scale, scale, S, LW, WIN, SINK_KEEP, D, DV,
        BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, True, True, CAUSAL, HAS_KVALID,
        USE_WINDOW, USE_BLOCK, BLOCK_SKIP, USE_THR, STATS, WRITE_O, COUNT, PREC, EVEN_D, EVEN_DV)

    # Epilogue: rows that saw a key have l >= 1 (their max contributes exp2(0)); others get zeros.
    has = l_i > 0
    l_safe = tl.where(has, l_i, 1.0)
    inv_l = 1.0 / l_safe
    log2_l = tl.log2(l_safe)
    lse2 = tl.where(has, m_i + log2_l, float("-inf"))
    rs = RS + pid_bh.to(tl.int64) * Nq + offs_m
    tl.store(rs + P_LSE2 * PLANE, lse2, mask=row_ok)
    if WRITE_O:
        offs_dv = tl.arange(0, BLOCK_DV)
        o = acc * inv_l[:, None]
        tl.store(O + b64 * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om
                 + offs_dv[None, :] * stride_od, o.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    if STATS:
        tl.store(rs + P_ENT * PLANE, tl.where(has, (log2_l - u_i * inv_l) * 0.6931471805599453, 0.0), mask=row_ok)
        tl.store(rs + P_SINK0 * PLANE, s0_i * inv_l, mask=row_ok)
        tl.store(rs + P_SINKS * PLANE, ss_i * inv_l, mask=row_ok)
        tl.store(rs + P_TOP1P * PLANE, tl.where(has, inv_l, 0.0), mask=row_ok)
        tl.store(rs + P_PREV * PLANE, pv_i * inv_l, mask=row_ok)
        tl.store(rs + P_LOCAL * PLANE, lc_i * inv_l, mask=row_ok)
        tl.store(rs + P_EDIST * PLANE, ed_i * inv_l, mask=row_ok)
        tl.store(TOP + pid_bh.to(tl.int64) * Nq + offs_m, tl.where(has, top_i, -1), mask=row_ok)
        if COUNT:
            tl.store(rs + P_NVIS * PLANE, cnt_i, mask=row_ok)
        if HAS_LSE_FULL:
            # retained mass R = sum over the variant's keys of p_full = exp(lse_variant - lse_full)
            lf = tl.load(LSE_FULL + b64 * stride_lb + h * stride_lh + offs_m * stride_lm, mask=row_ok, other=0.0)
            tl.store(rs + P_RET * PLANE, tl.where(has, tl.exp2(lse2 - lf * 1.4426950408889634), 0.0), mask=row_ok)
