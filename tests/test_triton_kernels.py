"""Triton kernels (kernels/triton_pass1.py, triton_pass2.py via triton_stats) under TRITON_INTERPRET=1.

Every statistic is checked against the dense fp64 oracle (reference.py) and the chunked torch twin
(torch_stats.py) on awkward shapes, with every kernel output buffer pre-filled with NaN so unwritten
elements fail; then closed forms and variant identities. Shapes are small: the interpreter runs each
program in numpy (about 10-30 ms per tile here).
"""
from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from kernels import triton_stats as ts  # noqa: E402
from kernels.backend import attention_stats  # noqa: E402
from kernels.reference import attention_stats_dense  # noqa: E402
from kernels.stats_types import AttentionStats, StatsConfig, VariantMask  # noqa: E402
from kernels.torch_stats import attention_stats_torch  # noqa: E402

pytestmark = pytest.mark.skipif(not ts.interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 (set by conftest)")

ROW = ("lse", "entropy", "n_visible", "sink0", "sink_s", "top1_prob", "prev_mass", "local_mass", "exp_dist")
COL = ("colsum", "n_queries", "pooled_mean", "pooled_max", "dist_hist")
REL = ("exp_dist", "colsum", "dist_hist")      # sums of many terms: compared relative to their size
TOL = 1e-5
# Under the interpreter tensors stay on the CPU; with TRITON_INTERPRET=0 on a GPU the same tests run
# the compiled kernels (fp32 dots use input_precision="ieee", so the 1e-5 tolerance holds there too).
DEV = "cuda" if (torch.cuda.is_available() and not ts.interpreting()) else "cpu"
WORST: dict = {}                               # field -> largest error seen (printed at the end)


# ---------------------------------------------------------------- interpreter speed, poisoning
@pytest.fixture(autouse=True, scope="module")
def _fast_interpreter():
    """The interpreter re-patches triton.language (inspect.getmembers over the module) on every
    call of a @triton.jit helper, tl.sum and tl.max included: ~2 ms each, most of the run time.
    Within one launch the patch is already in place, so skip the repeats. Test speed only; if the
    interpreter's internals differ (another triton version) this does nothing."""
    try:
        from triton.runtime import interpreter as interp
        orig_patch, orig_call = interp._patch_lang, interp.GridExecutor.__call__
        import triton.language as tl
    except Exception:
        yield
        return
    state = {"on": False, "seen": set()}

    class _Noop:
        def restore(self):
            pass

    def patch_lang(fn):
        key = frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
        if state["on"] and key in state["seen"]:
            return _Noop()
        scope = orig_patch(fn)
        if state["on"]:
            state["seen"].add(key)
        return scope

    def grid_call(self, *a, **k):
        state["on"], state["seen"] = True, set()
        try:
            return orig_call(self, *a, **k)
        finally:
            state["on"], state["seen"] = False, set()

    interp._patch_lang, interp.GridExecutor.__call__ = patch_lang, grid_call
    try:
        yield
    finally:
        interp._patch_lang, interp.GridExecutor.__call__ = orig_patch, orig_call


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Kernel output buffers start as NaN (floats) or a sentinel (ints): unwritten rows fail."""
    def empty(shape, dtype, device):
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.fill_(float("nan")) if dtype.is_floating_point else t.fill_(-7777)
    monkeypatch.setattr(ts, "_empty", empty)


@pytest.fixture(autouse=True, scope="module")
def _report():
    yield
    if WORST:
        print("\nmax errors (triton vs oracle/twin): " + ", ".join(f"{k}={v:.1e}" for k, v in sorted(WORST.items())))


# ---------------------------------------------------------------- helpers
def make(b, h, hkv, nq, d, *, nk=None, dtype=torch.float32, seed=0, pad=None, mult=1.0):
    g = torch.Generator().manual_seed(seed)
    nk = nk or nq
    q = (torch.randn(b, h, nq, d, generator=g) * mult).to(dtype)
    k = torch.randn(b, hkv, nk, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, nk, d, generator=g).to(dtype)
    kv = None
    if pad is not None:                         # left padding: pad[i] leading invalid keys in batch i
        kv = torch.ones(b, nk, dtype=torch.bool)
        for i, n in enumerate(pad):
            kv[i, :n] = False
        kv = kv.to(DEV)
    return q.to(DEV), k.to(DEV), v.to(DEV), kv


def _close(name, x, y, tol, rel):
    x, y = x.double().cpu(), y.double().cpu()
    assert x.shape == y.shape, f"{name}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
    assert not torch.isnan(x).any(), f"{name}: NaN (unwritten or 0*inf)"
    fin = torch.isfinite(y)
    assert torch.equal(torch.isfinite(x), fin), f"{name}: infinities differ"
    assert torch.equal(x[~fin], y[~fin]), f"{name}: infinities differ"
    if not fin.any():
        return 0.0
    err = (x[fin] - y[fin]).abs()
    if rel:
        err = err / y[fin].abs().clamp(min=1.0)
    e = err.max().item()
    WORST[name] = max(WORST.get(name, 0.0), e)
    assert e <= tol, f"{name}: max {'rel ' if rel else ''}err {e:.2e} > {tol:.0e}"
    return e


def check(tri: AttentionStats, ref: AttentionStats, tol=TOL, maps_ref=None, out_tol=None, tag=""):
    """Every field of tri against ref; top1_idx may differ only on (near) ties."""
    assert tri.pool == ref.pool
    if ref.out is not None:
        _close(tag + "out", tri.out.float(), ref.out.float(), out_tol or tol, False)
    for f in ROW + COL:
        _close(tag + f, getattr(tri, f), getattr(ref, f), tol, f in REL)
    ti, ri = tri.top1_idx, ref.top1_idx
    assert torch.equal(ti < 0, ri < 0), "top1_idx: rows without keys differ"
    diff = ti != ri
    if diff.any():                              # a tie: the chosen key must carry the max probability
        assert maps_ref is not None, "top1_idx differs and no map to judge ties"
        got = maps_ref.double().gather(-1, ti.clamp(min=0)[..., None])[..., 0]
        assert (got[diff] >= ref.top1_prob.double()[diff] - tol).all(), "top1_idx is not a maximiser"
    assert (tri.retained is None) == (ref.retained is None)
    if tri.retained is not None:
        _close("retained", tri.retained, ref.retained, tol, False)
    if tri.maps is not None:                    # (the oracle always brings maps, for the tie check)
        _close("maps", tri.maps, ref.maps, tol, False)


def run3(q, k, v, *, causal, kv=None, config=StatsConfig(), variant=None, blocks=None, scale=None):
    """(triton, oracle, twin) on the same inputs."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    kw = dict(scale=scale, causal=causal, key_valid=kv, config=config, variant=variant)
    tri = ts.attention_stats_triton(q, k, v, blocks=blocks, **kw)
    ref = attention_stats_dense(q, k, v, **{**kw, "config": StatsConfig(**{**config.__dict__, "full_maps": True})})
    twin = attention_stats_torch(q, k, v, **kw)
    return tri, ref, twin


# ---------------------------------------------------------------- oracle + twin on awkward shapes
# (B, H, Hkv, Nq, Nk, D, causal, left pad per batch, pool P (0 = auto), blocks)
SHAPES = [
    (1, 2, 2, 1, 1, 16, True, None, 0, None),                 # N = 1
    (2, 4, 2, 63, 63, 80, True, (5, 0), 0, None),             # G=2, D=80 (BD=128 masked), ragged
    (1, 4, 1, 100, 100, 64, False, (9,), 0, None),            # G=4, bidirectional, padding
    (2, 2, 2, 130, 130, 16, False, None, 0, None),            # three key blocks, tail of 2
    (1, 2, 1, 256, 256, 128, True, (17,), 0, None),           # D=128, auto P=2
    (1, 2, 1, 130, 130, 64, True, None, 32, (32, 32, 32, 64)),  # P=32: mixed cell shapes
    (1, 2, 1, 100, 100, 16, False, (3,), 3, (32, 32, 32, 32)),  # odd P: 1x1 partial cells
    (1, 2, 2, 130, 130, 16, True, (1,), 128, (32, 32, 32, 32)),  # P > blocks: scalar cells
    (2, 2, 1, 37, 130, 64, True, (0, 20), 0, None),           # Nq < Nk (decoding with a cache)
]


@pytest.mark.parametrize("b,h,hkv,nq,nk,d,causal,pad,pool,blocks", SHAPES,
                         ids=[f"B{s[0]}H{s[1]}kv{s[2]}N{s[3]}x{s[4]}D{s[5]}{'c' if s[6] else 'b'}"
                              f"{'pad' if s[7] else ''}P{s[8]}" for s in SHAPES])
def test_against_oracle_and_twin(b, h, hkv, nq, nk, d, causal, pad, pool, blocks):
    q, k, v, kv = make(b, h, hkv, nq, d, nk=nk, pad=pad, seed=nq + d)
    # full maps (pass 2's extra store) on the bidirectional padded shapes: padding rows keep their p
    cfg = StatsConfig(sink_tokens=4, local_window=8, pool_size=pool, full_maps=bool(pad) and not causal)
    tri, ref, twin = run3(q, k, v, causal=causal, kv=kv, config=cfg, blocks=blocks)
    check(tri, ref, maps_ref=ref.maps)
    check(tri, twin, maps_ref=ref.maps)


@pytest.mark.parametrize("causal,window,sinks,pad", [(True, 18, 0, None), (False, 18, 4, None), (True, 18, 4, (3,)),
                                                      (True, 1, 1, (2,)), (False, 2, 4, (3,))])
def test_position_masses_at_block_edges(causal, window, sinks, pad):
    """prev/local/sink masses are only accumulated on key blocks in a band around the query block:
    W = 18 with 16-key blocks puts the band edge exactly on a block boundary (both sides when
    bidirectional); W = 1, 2 and S = 0, 1 are the degenerate windows."""
    q, k, v, kv = make(1, 2, 1, 70, 16, pad=pad, seed=window)
    cfg = StatsConfig(sink_tokens=sinks, local_window=window)
    tri, ref, twin = run3(q, k, v, causal=causal, kv=kv, config=cfg, blocks=(32, 16, 32, 32))
    check(tri, ref, maps_ref=ref.maps)
    check(tri, twin, maps_ref=ref.maps)


def test_key_validity_with_holes_and_value_dim():
    """key_valid is not only left padding: holes and right padding (positions skip invalid keys, so
    distances and the prev/local band are in positions, not indices); v has its own head dim."""
    b, h, n, d, dv = 2, 2, 70, 24, 40
    g = torch.Generator().manual_seed(43)
    q, k = torch.randn(b, h, n, d, generator=g).to(DEV), torch.randn(b, 1, n, d, generator=g).to(DEV)
    v = torch.randn(b, 1, n, dv, generator=g).to(DEV)
    kv = torch.rand(b, n, generator=g) > 0.3
    kv[1, 55:] = False                                                # right padding too
    kv = kv.to(DEV)
    for causal in (True, False):
        tri, ref, twin = run3(q, k, v, causal=causal, kv=kv, config=StatsConfig(local_window=5),
                              blocks=(32, 32, 32, 32))
        check(tri, ref, maps_ref=ref.maps)
        check(tri, twin, maps_ref=ref.maps)


def test_full_maps_and_stride_generic_hf_layout():
    """q/k/v as views of the HF [B,T,H,D] layout (no .contiguous()), maps from pass 2."""
    b, h, hkv, n, d = 2, 4, 2, 50, 48
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, n, h, d, generator=g).to(DEV).transpose(1, 2)
    k = torch.randn(b, n, hkv, d, generator=g).to(DEV).transpose(1, 2)
    v = torch.randn(b, hkv, d, n, generator=g).to(DEV).transpose(2, 3)   # yet another stride order
    kv = torch.ones(b, n, dtype=torch.bool)
    kv[1, :6] = False
    kv = kv.to(DEV)
    cfg = StatsConfig(full_maps=True)
    tri, ref, _ = run3(q, k, v, causal=True, kv=kv, config=cfg)
    check(tri, ref, maps_ref=ref.maps)
    cont = ts.attention_stats_triton(q.contiguous(), k.contiguous(), v.contiguous(), scale=d ** -0.5,
                                     causal=True, key_valid=kv, config=cfg)
    for f in ("out", "lse", "entropy", "colsum", "maps"):
        assert torch.equal(getattr(tri, f), getattr(cont, f)), f


# ---------------------------------------------------------------- variants
def test_window_sinks_with_retained_mass():
    q, k, v, kv = make(2, 2, 1, 100, 32, pad=(0, 11), seed=7)
    kw = dict(scale=32 ** -0.5, causal=True, key_valid=kv)
    full = attention_stats_dense(q, k, v, config=StatsConfig(full_maps=True), **kw)
    var = VariantMask(window=16, sink_keep=4, lse_full=full.lse)
    tri, ref, twin = run3(q, k, v, causal=True, kv=kv, variant=var)
    check(tri, ref, maps_ref=ref.maps)
    check(tri, twin, maps_ref=ref.maps)
    has = torch.isfinite(full.lse)
    r = tri.retained
    assert ((r[has] > 0) & (r[has] <= 1 + 1e-6)).all() and (r[~has] == 0).all()
    # R is what makes KL(variant || full) = -log R exact: compare with the dense KL
    pv, pf = ref.maps.double(), full.maps.double()
    kl = torch.where(pv > 0, pv * (pv.clamp(min=1e-300).log() - pf.clamp(min=1e-300).log()), 0.0).sum(-1)
    _close("retained.kl", -torch.log(r.double())[has], kl[has], TOL, False)


@pytest.mark.parametrize("block_q,block_k,blocks", [(32, 32, (32, 32, 32, 32)), (48, 40, (32, 32, 32, 32))],
                         ids=["aligned-skip", "straddling-gather"])
def test_block_sparse(block_q, block_k, blocks):
    b, h, n = 1, 2, 130
    q, k, v, kv = make(b, h, 1, n, 32, pad=(4,), seed=11)
    g = torch.Generator().manual_seed(5)
    bm = (torch.rand(b, h, -(-n // block_q), -(-n // block_k), generator=g) > 0.4).to(DEV)
    bm[..., 0] = True                                            # NSA-style: keep block 0
    full = attention_stats_dense(q, k, v, scale=32 ** -0.5, causal=True, key_valid=kv)
    var = VariantMask(block_mask=bm, block_q=block_q, block_k=block_k, lse_full=full.lse)
    tri, ref, twin = run3(q, k, v, causal=True, kv=kv, variant=var, blocks=blocks)
    check(tri, ref, maps_ref=ref.maps)
    check(tri, twin, maps_ref=ref.maps)


def test_row_threshold_topk():
    """tau_i halfway between the 8th and 9th largest visible scaled logit (fp64), so fp32 rounding
    cannot flip a key; keeps exactly 8 keys where a row sees more than 8."""
    b, h, n, d, topk = 1, 2, 100, 32, 8
    q, k, v, kv = make(b, h, 2, n, d, pad=(6,), seed=13)
    s = (q.double() @ k.double().transpose(-1, -2)) * d ** -0.5
    s = s.masked_fill(~kv[:, None, None, :], float("-inf"))
    top = s.topk(topk + 1, dim=-1).values
    tau = ((top[..., topk - 1] + top[..., topk]) / 2).float()
    tau = torch.where(torch.isfinite(tau), tau, torch.full_like(tau, -1e30))
    full = attention_stats_dense(q, k, v, scale=d ** -0.5, causal=False, key_valid=kv)
    var = VariantMask(row_threshold=tau, lse_full=full.lse)
    tri, ref, twin = run3(q, k, v, causal=False, kv=kv, variant=var)
    check(tri, ref, maps_ref=ref.maps)
    check(tri, twin, maps_ref=ref.maps)
    assert (tri.n_visible == topk).all()


def _equal_stats(a: AttentionStats, b: AttentionStats, tol=1e-6):
    for f in ("out",) + ROW + COL + ("top1_idx",):
        x, y = getattr(a, f), getattr(b, f)
        assert torch.allclose(x.double(), y.double(), atol=tol, rtol=tol, equal_nan=False), f


@pytest.mark.parametrize("kind", ["window>=N", "tau=-inf", "blockmask-all"])
def test_variant_that_keeps_everything_equals_full(kind):
    b, h, n, d = 1, 2, 100, 32
    q, k, v, kv = make(b, h, 1, n, d, pad=(5,), seed=17)
    kw = dict(scale=d ** -0.5, causal=True, key_valid=kv)
    full = ts.attention_stats_triton(q, k, v, **kw)
    if kind == "window>=N":
        var = VariantMask(window=n + 3, lse_full=full.lse)
    elif kind == "tau=-inf":
        var = VariantMask(row_threshold=torch.full((b, h, n), float("-inf"), device=DEV), lse_full=full.lse)
    else:
        var = VariantMask(block_mask=torch.ones(b, h, 2, 4, dtype=torch.bool, device=DEV), block_q=64, block_k=32,
                          lse_full=full.lse)
    got = ts.attention_stats_triton(q, k, v, variant=var, **kw)
    _equal_stats(got, full)
    has = torch.isfinite(full.lse)
    assert torch.allclose(got.retained[has], torch.ones((), device=DEV), atol=1e-6)
    assert (got.retained[~has] == 0).all()


# ---------------------------------------------------------------- closed forms and invariants
def test_uniform_attention_closed_forms():
    """q = 0: every visible key has the same logit. Causal row i: entropy ln(i+1), sink_S mass
    min(S, i+1)/(i+1), top1 = key 0 with prob 1/(i+1), E|d| = i/2; column j: H_N - H_j."""
    b, h, n, d, S = 1, 2, 130, 16, 4
    _, k, v, _ = make(b, h, h, n, d, seed=19)
    q = torch.zeros(b, h, n, d, device=DEV)
    st = ts.attention_stats_triton(q, k, v, scale=0.125, causal=True, config=StatsConfig(sink_tokens=S, local_window=8))
    i = torch.arange(n, dtype=torch.float64, device=DEV)
    harm = torch.cat([torch.zeros(1, dtype=torch.float64, device=DEV), torch.cumsum(1.0 / (i + 1), 0)])   # H_0..H_N
    exp = {
        "entropy": torch.log(i + 1), "sink_s": torch.clamp(i + 1, max=S) / (i + 1), "sink0": 1 / (i + 1),
        "top1_prob": 1 / (i + 1), "exp_dist": i / 2, "prev_mass": (i >= 1) / (i + 1),
        "local_mass": torch.clamp(i + 1, max=8) / (i + 1), "n_visible": i + 1,
    }
    for f, e in exp.items():
        _close("uniform." + f, getattr(st, f)[0, 0], e, TOL, f == "exp_dist")
    _close("uniform.colsum", st.colsum[0, 1], harm[n] - harm[:n], TOL, True)
    assert (st.top1_idx == 0).all()
    assert torch.allclose(st.colsum.sum(-1).double(), torch.full((b, h), float(n), dtype=torch.float64, device=DEV),
                          rtol=1e-6)


def test_gqa_equals_repeated_kv():
    q, k, v, kv = make(1, 4, 2, 70, 40, pad=(3,), seed=23)
    kw = dict(scale=40 ** -0.5, causal=True, key_valid=kv)
    g2 = ts.attention_stats_triton(q, k, v, **kw)
    g1 = ts.attention_stats_triton(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), **kw)
    for f in ("out",) + ROW + COL + ("top1_idx",):
        assert torch.equal(getattr(g2, f), getattr(g1, f)), f


def test_large_logits_and_fully_padded_rows_stay_finite():
    """x100 logits (near one-hot rows) and a batch element with no valid key at all."""
    b, h, n, d = 2, 2, 70, 32
    q, k, v, _ = make(b, h, 1, n, d, seed=29, mult=100.0)
    kv = torch.ones(b, n, dtype=torch.bool, device=DEV)
    kv[1] = False                                                   # every row of batch 1 is empty
    for causal in (True, False):
        st = ts.attention_stats_triton(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv)
        for f in ("out",) + ROW + COL:
            x = getattr(st, f)
            assert not torch.isnan(x).any(), f
            if f != "lse":
                assert torch.isfinite(x).all(), f
        assert torch.isfinite(st.lse[0]).all()
        assert (st.lse[1] == float("-inf")).all() and (st.top1_idx[1] == -1).all()
        for f in ("entropy", "n_visible", "sink0", "sink_s", "top1_prob", "exp_dist"):
            assert (getattr(st, f)[1] == 0).all(), f
        assert (st.out[1] == 0).all() and (st.colsum[1] == 0).all()
        ref = attention_stats_dense(q[:1], k[:1], v[:1], scale=d ** -0.5, causal=causal)
        for f in ("lse", "entropy", "top1_prob", "sink_s", "exp_dist"):
            _close("x100." + f, getattr(st, f)[:1], getattr(ref, f), 1e-4, f == "exp_dist")
        e = st.entropy[0]
        assert (e >= -1e-5).all() and (e <= torch.log(st.n_visible[0]) + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    """fp16 (interpreted as is) and bf16 (upcast on the host under the interpreter): statistics
    against the twin on the same rounded inputs; O is rounded to the input dtype."""
    q, k, v, kv = make(1, 2, 1, 100, 64, dtype=dtype, pad=(7,), seed=31)
    kw = dict(scale=0.125, causal=True, key_valid=kv)
    tri = ts.attention_stats_triton(q, k, v, **kw)
    twin = attention_stats_torch(q, k, v, **kw)
    assert tri.out.dtype == dtype
    # p is rounded to the input dtype before P@V in the kernel (FlashAttention practice)
    check(tri, twin, tol=2e-5 if dtype == torch.float16 else TOL, out_tol=2e-2, tag=str(dtype)[6:] + ".")


def test_stats_only_and_stats_off_baseline():
    q, k, v, kv = make(1, 2, 1, 100, 48, pad=(2,), seed=37)
    kw = dict(scale=48 ** -0.5, causal=True, key_valid=kv)
    full = ts.attention_stats_triton(q, k, v, **kw)
    so = ts.attention_stats_triton(q, k, None, **kw)
    assert so.out is None
    for f in ROW + COL + ("top1_idx",):
        assert torch.equal(getattr(so, f), getattr(full, f)), f
    out, lse = ts.flash_forward(q, k, v, **kw)
    assert torch.equal(out, full.out) and torch.equal(lse, full.lse)


def test_backend_dispatch():
    q, k, v, kv = make(1, 2, 2, 40, 16, pad=(2,), seed=41)
    kw = dict(scale=0.25, causal=True, key_valid=kv)
    a = attention_stats(q, k, v, backend="triton", **kw)
    b = attention_stats(q, k, v, backend="torch", **kw)
    check(a, b)


# ---------------------------------------------------------------- the benchmark's code path
def test_bench_cpu_smoke(tmp_path):
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    try:
        from bench import bench_kernels
    finally:
        sys.path.remove(str(root))
    out = tmp_path / "smoke.md"
    t0 = time.time()
    assert bench_kernels.main(["--cpu-smoke", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| pass1+pass2 |" in text and "stats off" in text and "eager" in text
    assert time.time() - t0 < 120
