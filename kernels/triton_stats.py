"""Triton backend: pass 1 (query-major, row statistics and O) + pass 2 (key-major, column statistics,
pooled maps, distance histogram) assembled into an AttentionStats with the torch twin's semantics.

Same kernel source on a GPU and under TRITON_INTERPRET=1 (tests). On a GPU, pass 1 is autotuned
(block sizes, warps, stages) and pass 2 tunes warps/stages for fixed blocks (the host needs its block
sizes to lay out the pooled partial cells). `@triton.autotune` is only applied when a CUDA device is
used without the interpreter: the autotuner needs an active driver, which a CPU machine lacks.

Host work is O(B*H*N) plus the pooled cells: position tables, closed-form counts without a variant,
reduction of the pooled partial cells and of the per-block histogram shares.
full_maps=True is served by pass 2 itself (an extra store of p per tile into a zeroed [B,H,Nq,Nk]).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton

from . import triton_pass1 as p1
from . import triton_pass2 as p2
from .positions import key_validity, positions, query_validity
from .stats_types import AttentionStats, StatsConfig, VariantMask, dist_bin_edges

# Every buffer a kernel must fill completely is allocated through this name, so tests can swap in
# a NaN-filling allocator and catch unwritten elements (fla's poison_torch_memory idea).
_empty = torch.empty

# Fixed blocks under the interpreter (the autotuner cannot run there); (pass1 BM, BN, pass2 BM, BN).
INTERPRET_BLOCKS = (64, 64, 64, 64)
# Pass-2 blocks on a GPU: a 128-key block stays resident while 64-query blocks stream by.
GPU_P2_BLOCKS = (64, 128)

_TUNED: dict = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class _interpreter_blas:
    """Under the interpreter every tl.dot is an np.matmul; with torch's OpenMP pool spinning next to
    OpenBLAS's threads on a small CPU one 64x128x64 product took 20-50 ms instead of 0.04 ms.
    One BLAS thread while kernels are interpreted (no-op on a GPU or without threadpoolctl)."""

    def __enter__(self):
        self._lim = None
        if interpreting():
            try:
                from threadpoolctl import threadpool_limits
                self._lim = threadpool_limits(1, user_api="blas")
            except Exception:
                self._lim = None
        return self

    def __exit__(self, *exc):
        if self._lim is not None:
            self._lim.restore_original_limits()
        return False


def _use_autotune(t: torch.Tensor) -> bool:
    return t.is_cuda and not interpreting()


def _p1_autotuned():
    if "p1" not in _TUNED:
        cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 3), (128, 128, 8, 3),
                                     (128, 128, 8, 2), (128, 32, 4, 3), (128, 32, 8, 4), (64, 64, 4, 3),
                                     (64, 64, 4, 4), (64, 32, 4, 3), (64, 128, 4, 2), (64, 128, 8, 3)]]
        _TUNED["p1"] = triton.autotune(
            configs=cfgs, key=["Nq", "Nk", "D", "DV", "CAUSAL", "STATS", "WRITE_O", "HAS_KVALID",
                               "USE_WINDOW", "USE_THR", "PREC"])(p1._pass1_kernel)
    return _TUNED["p1"]


def _p2_autotuned():
    if "p2" not in _TUNED:
        cfgs = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]
        _TUNED["p2"] = triton.autotune(
            configs=cfgs, key=["Nq", "Nk", "D", "CAUSAL", "HAS_KVALID", "PQ", "PK", "USE_WINDOW",
                               "USE_THR", "USE_BLOCK", "FULL_MAPS", "PREC"])(p2._pass2_kernel)
    return _TUNED["p2"]


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if t.dtype == torch.bfloat16 and interpreting():
        return torch.float32          # the interpreter's bf16 tl.dot is wrong (triton #11584)
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return t.dtype
    return torch.float32


def _tables(kvalid: torch.Tensor, nq: int, config: StatsConfig):
    """int32 positions, and per query row the key-index band that can hold prev/local keys
    (|qpos - kpos| <= max(W - 1, 1)), and per batch the end of the keys with position < max(S, 1)."""
    kpos64 = positions(kvalid).contiguous()
    nk = kvalid.shape[1]
    qpos = kpos64[:, nk - nq:].contiguous()
    r = max(config.local_window - 1, 1)
    band_lo = torch.searchsorted(kpos64, qpos - r).to(torch.int32).contiguous()
    band_hi = torch.searchsorted(kpos64, qpos + r, right=True).to(torch.int32).contiguous()
    mass_end = (kpos64 < max(config.sink_tokens, 1)).sum(-1).to(torch.int32).contiguous()
    return kpos64.to(torch.int32).contiguous(), band_lo, band_hi, mass_end


def _strides(t: Optional[torch.Tensor], n: int):
    return tuple(t.stride()) if t is not None else (0,) * n


class _Prep:
    """Everything both passes need, derived once from the inputs."""

    def __init__(self, q, k, v, scale, causal, key_valid, config, variant):
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError("q must be [B,H,Nq,D] and k, v [B,Hkv,Nk,D]")
        b, h, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        if k.shape[0] != b or k.shape[3] != d:
            raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
        if h % hkv:
            raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({hkv})")
        if nq > nk:
            raise ValueError(f"more queries ({nq}) than keys ({nk}): queries are the last Nq keys")
        if v is not None and (v.shape[:3] != k.shape[:3]):
            raise ValueError(f"v {tuple(v.shape)} does not match k {tuple(k.shape)}")
        dev = q.device
        self.out_dtype = q.dtype
        cdt = _compute_dtype(q)
        self.q = q if q.dtype == cdt else q.to(cdt)
        self.k = k if k.dtype == cdt else k.to(cdt)
        self.v = None if v is None else (v if v.dtype == cdt else v.to(cdt))
        self.cdt = cdt
        self.prec = "ieee" if cdt == torch.float32 else "tf32"
        self.b, self.h, self.nq, self.nk, self.d, self.g = b, h, nq, nk, d, h // hkv
        self.dv = v.shape[-1] if v is not None else d
        self.scale = float(scale)
        self.causal = bool(causal)
        self.config = config
        self.kvalid = key_validity(key_valid, b, nk, dev)
        self.qvalid = query_validity(self.kvalid, nq)
        self.has_kvalid = not bool(self.kvalid.all())
        self.kval_i8 = self.kvalid.to(torch.int8).contiguous()
        self.kpos, self.band_lo, self.band_hi, self.mass_end = _tables(self.kvalid, nq, config)
        var = variant if (variant is not None and variant.active) else None
        self.variant = var
        self.use_window = var is not None and var.window is not None
        self.win = int(var.window) if self.use_window else 0
        self.sink_keep = int(var.sink_keep) if self.use_window else 0
        self.tau = None
        if var is not None and var.row_threshold is not None:
            self.tau = var.row_threshold.to(device=dev, dtype=torch.float32)
            if self.tau.shape != (b, h, nq):
                raise ValueError(f"row_threshold must be [B,H,Nq] = {(b, h, nq)}, got {tuple(self.tau.shape)}")
        self.bmask, self.bq, self.bk = None, 1, 1
        if var is not None and var.block_mask is not None:
            bm = var.block_mask.to(device=dev, dtype=torch.int8)
            need = (-(-nq // var.block_q), -(-nk // var.block_k))
            if bm.dim() != 4 or bm.shape[2] < need[0] or bm.shape[3] < need[1]:
                raise ValueError(f"block_mask must be [B,H,>={need[0]},>={need[1]}], got {tuple(bm.shape)}")
            self.bmask = bm.expand(b, h, bm.shape[2], bm.shape[3])
            self.bq, self.bk = int(var.block_q), int(var.block_k)
        self.lse_full = None
        if var is not None and var.lse_full is not None:
            self.lse_full = var.lse_full.to(device=dev, dtype=torch.float32)
        self.count = var is not None
        self.dummy = self.kpos


def _launch_pass1(pp: _Prep, stats: bool, blocks):
    b, h, nq, nk = pp.b, pp.h, pp.nq, pp.nk
    dev = pp.q.device
    write_o = pp.v is not None
    out = _empty((b, h, nq, pp.dv), dtype=pp.cdt, device=dev) if write_o else None
    rs = _empty((p1.NPLANES, b, h, nq), dtype=torch.float32, device=dev)
    top = _empty((b, h, nq), dtype=torch.int32, device=dev)
    dm = pp.dummy
    use_block = pp.bmask is not None
    need_inner = pp.has_kvalid or pp.use_window or use_block or pp.tau is not None
    args = [pp.q, pp.k, pp.v if write_o else pp.k, out if write_o else pp.q, rs, top, pp.kval_i8, pp.kpos,
            pp.band_lo, pp.band_hi, pp.mass_end,
            pp.tau if pp.tau is not None else dm, pp.bmask if use_block else dm,
            pp.lse_full if pp.lse_full is not None else dm,
            *pp.q.stride(), *pp.k.stride(), *(pp.v.stride() if write_o else pp.k.stride()),
            *(out.stride() if write_o else (0, 0, 0, 0)),
            *_strides(pp.tau, 3), *_strides(pp.bmask, 4), *_strides(pp.lse_full, 3),
            h, pp.g, nq, nk, pp.d, pp.dv, b * h * nq,
            pp.scale * p1.LOG2E, pp.scale, pp.config.sink_tokens, pp.config.local_window,
            pp.win, pp.sink_keep, pp.bq, pp.bk]
    kw = dict(BLOCK_D=_pow2(pp.d), BLOCK_DV=_pow2(pp.dv), CAUSAL=pp.causal, HAS_KVALID=pp.has_kvalid,
              USE_WINDOW=pp.use_window, USE_BLOCK=use_block, USE_THR=pp.tau is not None,
              HAS_LSE_FULL=stats and pp.lse_full is not None, STATS=stats, WRITE_O=write_o,
              COUNT=stats and pp.count, NEED_INNER=need_inner, PREC=pp.prec,
              EVEN_D=_pow2(pp.d) == pp.d, EVEN_DV=_pow2(pp.dv) == pp.dv)
    if _use_autotune(pp.q) and not use_block and blocks is None:
        # BLOCK_SKIP depends on the block sizes, so block-sparse runs use a fixed config instead
        kern = _p1_autotuned()
        grid = lambda meta: (triton.cdiv(nq, meta["BLOCK_M"]), b * h)  # noqa: E731
        kern[grid](*args, BLOCK_SKIP=False, **kw)
    else:
        bm_, bn_ = (blocks[0], blocks[1]) if blocks is not None else (
            INTERPRET_BLOCKS[:2] if not _use_autotune(pp.q) else (64, 64))
        skip = use_block and pp.bq % bm_ == 0 and pp.bk % bn_ == 0
        extra = {} if not _use_autotune(pp.q) else dict(num_warps=4, num_stages=3)
        p1._pass1_kernel[(triton.cdiv(nq, bm_), b * h)](*args, BLOCK_M=bm_, BLOCK_N=bn_, BLOCK_SKIP=skip,
                                                        **kw, **extra)
    return out, rs, top


def prepare(q, k, v, *, scale: float, causal: bool, key_valid=None, config: StatsConfig = StatsConfig(),
            variant: Optional[VariantMask] = None) -> _Prep:
    """Host tables for both passes (benchmarks time the kernels without this O(B*N) setup)."""
    return _Prep(q, k, v, scale, causal, key_valid, config, variant)


def run_pass1(pp: _Prep, stats: bool = True, blocks=None):
    """Launch pass 1 alone: (out or None, RS [NPLANES,B,H,Nq] fp32 row planes, top1 [B,H,Nq] int32)."""
    with _interpreter_blas():
        return _launch_pass1(pp, stats, blocks)


def run_pass2(pp: _Prep, rs: torch.Tensor, blocks=None):
    """Launch pass 2 on pass 1's row planes: (colsum, n_queries or None, pooled_mean, pooled_max,
    dist_hist, maps or None); n_queries is None when it has a closed form (no variant)."""
    nk = pp.nk
    pool = pp.config.pool_for(nk)
    nb = len(dist_bin_edges(pp.config.n_dist_bins))
    with _interpreter_blas():
        return _pass2(pp, rs[0], pool, -(-pp.nq // pool), -(-nk // pool), nb, blocks)


def flash_forward(q, k, v, *, scale: float, causal: bool, key_valid=None):
    """The same pass-1 kernel with every statistic compiled out (the overhead baseline):
    returns (out [B,H,Nq,DV] in q.dtype, natural-log lse [B,H,Nq])."""
    pp = _Prep(q, k, v, scale, causal, key_valid, StatsConfig(), None)
    out, rs, _ = run_pass1(pp, stats=False)
    return out.to(pp.out_dtype), rs[0] * p1.LN2


def attention_stats_triton(q: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor], *, scale: float,
                           causal: bool, key_valid: Optional[torch.Tensor] = None,
                           config: StatsConfig = StatsConfig(), variant: Optional[VariantMask] = None,
                           blocks: Optional[tuple] = None, with_pass2: bool = True) -> AttentionStats:
    """q [B,H,Nq,D]; k, v [B,Hkv,Nk,D] (any strides; H a multiple of Hkv); v=None: stats only.

    blocks=(BM1, BN1, BM2, BN2) pins the tile sizes (tests); with_pass2=False skips the column
    statistics (benchmarks time pass 1 alone; those fields are then left empty)."""
    with _interpreter_blas():
        return _attention_stats(q, k, v, scale, causal, key_valid, config, variant, blocks, with_pass2)


def _attention_stats(q, k, v, scale, causal, key_valid, config, variant, blocks, with_pass2):
    pp = _Prep(q, k, v, scale, causal, key_valid, config, variant)
    b, h, nq, nk = pp.b, pp.h, pp.nq, pp.nk
    f32 = torch.float32
    out, rs, top = _launch_pass1(pp, stats=True, blocks=blocks)
    pl = dict(zip(p1.PLANES, rs.unbind(0)))

    # without a variant, visible-key counts have closed forms (as in the torch twin)
    if pp.count:
        nvis = pl["n_visible"]
    else:
        if pp.causal:
            nv = pp.kvalid.long().cumsum(-1)[:, nk - nq:].to(f32)
        else:
            nv = pp.kvalid.sum(-1, keepdim=True).expand(b, nq).to(f32)
        nvis = nv[:, None].expand(b, h, nq).contiguous()

    pool = config.pool_for(nk)
    colsum = nqry = pmean = pmax = hist = maps = None
    if with_pass2:
        colsum, nqry, pmean, pmax, hist, maps = run_pass2(pp, rs, blocks)
        if nqry is None:
            nqry = _closed_form_nqueries(pp)
    return AttentionStats(
        out=out.to(pp.out_dtype) if out is not None else None,
        lse=pl["lse2"] * p1.LN2, entropy=pl["entropy"], n_visible=nvis,
        sink0=pl["sink0"], sink_s=pl["sink_s"], top1_idx=top.long(), top1_prob=pl["top1_prob"],
        prev_mass=pl["prev_mass"], local_mass=pl["local_mass"], exp_dist=pl["exp_dist"],
        colsum=colsum, n_queries=nqry, pooled_mean=pmean, pooled_max=pmax, dist_hist=hist, pool=pool,
        maps=maps, retained=pl["retained"] if pp.lse_full is not None else None)


def _closed_form_nqueries(pp: _Prep) -> torch.Tensor:
    b, h, nq, nk = pp.b, pp.h, pp.nq, pp.nk
    dev = pp.q.device
    off = nk - nq
    kvalid, qvalid = pp.kvalid, pp.qvalid
    if pp.causal:
        qcount = torch.flip(torch.flip(qvalid.long(), [-1]).cumsum(-1), [-1])   # valid queries at >= i
        j = torch.arange(nk, device=dev)
        jq = (j - off).clamp(min=0, max=nq - 1)
        n = torch.where(j - off < nq, qcount[:, jq], torch.zeros((), dtype=torch.long, device=dev))
    else:
        n = qvalid.sum(-1, keepdim=True).expand(b, nk)
    return (n * kvalid).to(torch.float32)[:, None].expand(b, h, nk).contiguous()


def _pass2(pp: _Prep, lse2: torch.Tensor, pool: int, mq: int, mk: int, nb: int, blocks):
    b, h, nq, nk = pp.b, pp.h, pp.nq, pp.nk
    dev = pp.q.device
    f32 = torch.float32
    if blocks is not None:
        bm_, bn_ = blocks[2], blocks[3]
    elif _use_autotune(pp.q):
        bm_, bn_ = GPU_P2_BLOCKS
    else:
        bm_, bn_ = INTERPRET_BLOCKS[2:]
    low = pool & -pool                              # largest power of two dividing P
    pq, pk = min(bm_, low), min(bn_, low)           # partial cells tile the blocks exactly
    n_qt, n_kt = triton.cdiv(nq, bm_), triton.cdiv(nk, bn_)
    nqc, nkc = n_qt * (bm_ // pq), n_kt * (bn_ // pk)
    nbp = triton.next_power_of_2(nb)
    colsum = _empty((b, h, nk), dtype=f32, device=dev)
    nqry = _empty((b, h, nk), dtype=f32, device=dev) if pp.count else None
    hist_part = _empty((b * h, n_kt, nbp), dtype=f32, device=dev)
    psum_part = _empty((b * h, nqc, nkc), dtype=f32, device=dev)
    pmax_part = _empty((b * h, nqc, nkc), dtype=f32, device=dev)
    maps = torch.zeros(b, h, nq, nk, dtype=f32, device=dev) if pp.config.full_maps else None
    dm = pp.dummy
    use_block = pp.bmask is not None
    key_mask = pp.has_kvalid or nk % bn_ != 0
    need_inner = key_mask or pp.use_window or use_block or pp.tau is not None
    args = [pp.q, pp.k, lse2, pp.kval_i8, pp.kpos, pp.tau if pp.tau is not None else dm,
            pp.bmask if use_block else dm, colsum, nqry if nqry is not None else colsum, hist_part,
            psum_part, pmax_part, maps if maps is not None else colsum,
            *pp.q.stride(), *pp.k.stride(), *_strides(pp.tau, 3), *_strides(pp.bmask, 4),
            *_strides(maps, 4), h, pp.g, nq, nk, pp.d, nkc, pp.scale * p1.LOG2E, pp.scale,
            pp.win, pp.sink_keep, pp.bq, pp.bk]
    kw = dict(BLOCK_M=bm_, BLOCK_N=bn_, BLOCK_D=_pow2(pp.d), PQ=pq, PK=pk, NB=nb, NBP=nbp,
              NEED_INNER=need_inner, KEY_MASK=key_mask, CAUSAL=pp.causal, HAS_KVALID=pp.has_kvalid,
              USE_WINDOW=pp.use_window, USE_BLOCK=use_block, USE_THR=pp.tau is not None,
              COUNT=pp.count, FULL_MAPS=maps is not None, PREC=pp.prec, EVEN_D=_pow2(pp.d) == pp.d)
    grid = (n_kt, b * h)
    if _use_autotune(pp.q):
        _p2_autotuned()[grid](*args, **kw)
    else:
        p2._pass2_kernel[grid](*args, **kw)

    # pooled map: group the partial cells (P/PQ rows x P/PK keys per pooled cell) and reduce
    rq, rk = pool // pq, pool // pk

    def fit(t):                                     # crop or zero-pad the cell grid to mq*rq x mk*rk
        t = t[:, :mq * rq, :mk * rk]
        pad_q, pad_k = mq * rq - t.shape[1], mk * rk - t.shape[2]
        if pad_q or pad_k:
            t = torch.nn.functional.pad(t, (0, pad_k, 0, pad_q))
        return t.reshape(b, h, mq, rq, mk, rk)

    psum = fit(psum_part).sum((3, 5))
    pmax = fit(pmax_part).amax((3, 5))
    qv = torch.nn.functional.pad(pp.qvalid.to(f32), (0, mq * pool - nq))
    nvr = qv.view(b, mq, pool).sum(-1)                                       # valid rows per pooled row
    ncols = (torch.clamp(nk - torch.arange(mk, device=dev) * pool, max=pool)).to(f32)
    pmean = psum / (nvr[:, None, :, None] * ncols).clamp(min=1)
    hist = hist_part.view(b, h, n_kt, nbp).sum(2)[..., :nb].contiguous()
    return colsum, nqry, pmean, pmax, hist, maps
