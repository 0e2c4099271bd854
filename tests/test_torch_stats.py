"""The chunked torch backend against the dense fp64 oracle, plus closed-form invariants."""
import itertools
import math

import pytest
import torch

from kernels import StatsConfig, VariantMask, attention_stats
from kernels.reference import attention_stats_dense
from kernels.torch_stats import attention_stats_torch
from tests.helpers import assert_stats_close

SHAPES = list(itertools.product([1, 63, 100, 130], [16, 80], [1, 3], [True, False], [0, 5]))


def _inputs(n, d, g, pad, b=2, hkv=2, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, n, d, generator=gen) * scale
    k = torch.randn(b, hkv, n, d, generator=gen) * scale
    v = torch.randn(b, hkv, n, d, generator=gen)
    kv = torch.ones(b, n, dtype=torch.bool)
    kv[-1, :pad] = False
    return q, k, v, kv


@pytest.fixture(params=["fused", "torch-ops"])
def cpu_path(request, monkeypatch):
    """Both CPU paths: the fused C++ row kernel (when built) and the pure-torch ops."""
    from kernels.cpu_rowstats import row_kernel
    if request.param == "fused" and row_kernel() is None:
        pytest.skip("fused CPU row kernel not built here")
    monkeypatch.setenv("ATTNVIS_CPU_FUSED", "1" if request.param == "fused" else "0")
    return request.param


def test_fused_kernel_builds_where_a_compiler_is():
    import shutil
    from kernels.cpu_rowstats import _cpu_has_avx2_fma, row_kernel, unavailable_reason
    if not (shutil.which("g++") or shutil.which("c++")) or not _cpu_has_avx2_fma():
        pytest.skip("no C++ compiler or no AVX2/FMA")
    assert row_kernel() is not None, unavailable_reason()


@pytest.mark.parametrize("n,d,g,causal,pad", [s for s in SHAPES if s[4] < s[0]])
def test_matches_fp64_oracle(n, d, g, causal, pad, cpu_path):
    q, k, v, kv = _inputs(n, d, g, pad)
    # mem_budget 0 forces the smallest chunks, so chunk boundaries and ragged tails are exercised
    cfg = StatsConfig(pool_size=16, full_maps=True, mem_budget_mb=0)
    got = attention_stats_torch(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv, config=cfg)
    ref = attention_stats_dense(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv, config=cfg)
    assert_stats_close(got, ref, where=f"n={n} d={d} g={g} causal={causal} pad={pad}")
    assert torch.equal(got.top1_idx, ref.top1_idx)


def test_noncontiguous_hf_layout_and_large_chunks():
    # q/k/v as they arrive from HF: [B, N, H, D] transposed views
    b, n, h, d = 1, 77, 4, 24
    q = torch.randn(b, n, h, d).transpose(1, 2)
    k = torch.randn(b, n, 2, d).transpose(1, 2)
    v = torch.randn(b, n, 2, d).transpose(1, 2)
    assert not q.is_contiguous()
    cfg = StatsConfig(full_maps=True)
    got = attention_stats_torch(q, k, v, scale=0.3, causal=True, config=cfg)
    ref = attention_stats_dense(q.contiguous(), k.contiguous(), v.contiguous(), scale=0.3, causal=True, config=cfg)
    assert_stats_close(got, ref)


@pytest.mark.parametrize("causal", [True, False])
def test_variant_masks_match_oracle(causal, cpu_path):
    n, d, g = 100, 32, 2
    q, k, v, kv = _inputs(n, d, g, pad=7)
    cfg = StatsConfig(pool_size=8, full_maps=True, mem_budget_mb=0)
    full = attention_stats_dense(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv, config=cfg)
    scores = torch.matmul(q, k.repeat_interleave(g, 1).transpose(-1, -2)) * d ** -0.5
    srt = scores.sort(-1).values                      # threshold midway between the 10th and 11th
    thr = (srt[..., n - 10] + srt[..., n - 11]) / 2   # largest logits: no ties at the cut
    bm = torch.rand(2, 4, -(-n // 16), -(-n // 32), generator=torch.Generator().manual_seed(1)) > 0.4
    for var in (VariantMask(window=9, sink_keep=3, lse_full=full.lse),
                VariantMask(row_threshold=thr, lse_full=full.lse),
                VariantMask(block_mask=bm, block_q=16, block_k=32, lse_full=full.lse)):
        got = attention_stats_torch(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv, config=cfg, variant=var)
        ref = attention_stats_dense(q, k, v, scale=d ** -0.5, causal=causal, key_valid=kv, config=cfg, variant=var)
        assert_stats_close(got, ref, where=str(var)[:40])
        # retained mass: KL(variant || full) = -log R
        assert (got.retained <= 1 + 1e-6).all()


def test_window_covering_everything_equals_full():
    q, k, v, kv = _inputs(64, 16, 2, 0)
    cfg = StatsConfig(full_maps=True)
    a = attention_stats(q, k, v, scale=0.25, causal=True, key_valid=kv, config=cfg)
    b = attention_stats(q, k, v, scale=0.25, causal=True, key_valid=kv, config=cfg,
                        variant=VariantMask(window=64, lse_full=a.lse))
    assert_stats_close(b, a, fields=("out", "lse", "entropy", "colsum", "maps"))
    assert torch.allclose(b.retained, torch.ones_like(b.retained), atol=1e-6)


def _harmonic(n):
    return sum(1.0 / i for i in range(1, n + 1))


@pytest.mark.parametrize("causal", [True, False])
def test_longer_rows_match_oracle(causal, cpu_path):
    """300 keys: full 8-wide vectors and 128-key argmax blocks with ragged tails, D = 40, left padding."""
    q, k, v, kv = _inputs(300, 40, 3, 7, seed=3, scale=2.0)
    cfg = StatsConfig(full_maps=True)
    got = attention_stats_torch(q, k, v, scale=40 ** -0.5, causal=causal, key_valid=kv, config=cfg)
    ref = attention_stats_dense(q, k, v, scale=40 ** -0.5, causal=causal, key_valid=kv, config=cfg)
    assert_stats_close(got, ref, where=f"n=300 causal={causal}")
    assert torch.equal(got.top1_idx, ref.top1_idx)


@pytest.mark.parametrize("causal", [True, False])
def test_chunks_straddling_pool_blocks(monkeypatch, causal, cpu_path):
    """32-row chunks against 48-row pool blocks: pooled maps accumulate block parts across chunks."""
    from kernels import torch_stats
    monkeypatch.setattr(torch_stats, "CHUNK_BYTES", 1)               # rows = MIN_ROWS = 32 < pool
    q, k, v, kv = _inputs(130, 16, 3, 5)
    cfg = StatsConfig(pool_size=48)
    assert torch_stats.rows_per_chunk(2, 6, 130, 48, cfg.mem_budget_mb) == 32
    got = attention_stats_torch(q, k, v, scale=0.25, causal=causal, key_valid=kv, config=cfg)
    ref = attention_stats_dense(q, k, v, scale=0.25, causal=causal, key_valid=kv, config=cfg)
    assert_stats_close(got, ref, where=f"causal={causal}")
    assert torch.equal(got.top1_idx, ref.top1_idx)


def test_uniform_attention_closed_forms(cpu_path):
    # q = 0 -> every visible key gets 1/(i+1): entropy ln(i+1), sink mass S/(i+1) (i >= S),
    # column sums H_N - H_j (harmonic numbers), column sums add up to the number of queries.
    n, d, S = 50, 8, 4
    q = torch.zeros(1, 2, n, d)
    k = torch.randn(1, 1, n, d)
    v = torch.randn(1, 1, n, d)
    st = attention_stats_torch(q, k, v, scale=1.0, causal=True, config=StatsConfig(sink_tokens=S, mem_budget_mb=0))
    i = torch.arange(n, dtype=torch.float64)
    assert torch.allclose(st.entropy[0, 0].double(), torch.log(i + 1), atol=1e-5)
    assert torch.allclose(st.sink0[0, 1].double(), 1 / (i + 1), atol=1e-6)
    assert torch.allclose(st.sink_s[0, 0, S:].double(), S / (i[S:] + 1), atol=1e-6)
    cols = torch.tensor([_harmonic(n) - _harmonic(j) for j in range(n)], dtype=torch.float64)
    assert torch.allclose(st.colsum[0, 0].double(), cols, atol=1e-5)
    assert math.isclose(st.colsum[0, 0].sum().item(), n, rel_tol=1e-6)
    assert torch.equal(st.n_queries[0, 0], torch.arange(n, 0, -1, dtype=torch.float32))
    # exp_dist: mean of 0..i = i/2; previous-token mass 1/(i+1) for i >= 1
    assert torch.allclose(st.exp_dist[0, 0].double(), i / 2, atol=1e-4)
    assert torch.allclose(st.prev_mass[0, 0, 1:].double(), 1 / (i[1:] + 1), atol=1e-6)
    assert st.entropy[0, 0, 0] == 0 and st.sink0[0, 0, 0] == 1
    assert torch.equal(st.top1_idx, torch.zeros_like(st.top1_idx))   # all keys tie: the first, as argmax


def test_extreme_logits_and_fully_padded_rows_are_nan_free(cpu_path):
    q, k, v, kv = _inputs(40, 16, 2, pad=40 - 1, scale=30.0)     # logits ~ x100
    kv[0, :] = False                                               # batch 0 has no valid key at all
    st = attention_stats_torch(q, k, v, scale=1.0, causal=True, key_valid=kv, config=StatsConfig(full_maps=True))
    for name in ("out", "entropy", "sink0", "colsum", "pooled_mean", "maps", "exp_dist", "dist_hist"):
        assert torch.isfinite(getattr(st, name)).all(), name
    assert (st.top1_idx[0] == -1).all() and (st.out[0] == 0).all() and torch.isinf(st.lse[0]).all()
    ref = attention_stats_dense(q, k, v, scale=1.0, causal=True, key_valid=kv, config=StatsConfig(full_maps=True))
    assert_stats_close(st, ref, tol=1e-4)


def test_gqa_equals_repeated_kv():
    q, k, v, kv = _inputs(70, 16, 3, pad=4)
    cfg = StatsConfig(full_maps=True)
    a = attention_stats_torch(q, k, v, scale=0.2, causal=True, key_valid=kv, config=cfg)
    b = attention_stats_torch(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), scale=0.2, causal=True,
                              key_valid=kv, config=cfg)
    assert_stats_close(a, b, tol=1e-6)


def test_decode_offset_queries_see_the_cache():
    # Nq < Nk (queries are the last Nq keys, as with a KV cache)
    q = torch.randn(1, 2, 5, 16)
    k = torch.randn(1, 2, 30, 16)
    v = torch.randn(1, 2, 30, 16)
    cfg = StatsConfig(full_maps=True, pool_size=4)
    got = attention_stats_torch(q, k, v, scale=0.25, causal=True, config=cfg)
    ref = attention_stats_dense(q, k, v, scale=0.25, causal=True, config=cfg)
    assert_stats_close(got, ref)
    assert torch.equal(got.n_visible[0, 0], torch.arange(26, 31, dtype=torch.float32))


def test_mismatched_heads_rejected():
    with pytest.raises(ValueError, match="multiple"):
        attention_stats_torch(torch.randn(1, 5, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8),
                              scale=1.0, causal=True)


@pytest.mark.parametrize("k", [1, 5, 127, 128, 129, 300, 1000])
def test_two_level_row_max_first_index_on_ties(k):
    from kernels.torch_stats import _row_max
    gen = torch.Generator().manual_seed(k)
    s = torch.randint(0, 4, (3, 40, k), generator=gen).float()       # many exact ties
    s[0, 0] = -1.0e30                                                 # a fully masked row: index 0
    m, idx = _row_max(s)
    assert torch.equal(m, s.amax(-1, keepdim=True))
    assert torch.equal(idx, s.argmax(-1, keepdim=True))


@pytest.mark.parametrize("k", [7, 130, 49157])
def test_logsumexp_argmax_matches_torch(k, cpu_path):
    """The loss helper (fused CPU kernel when built) against torch.logsumexp / argmax, ties included."""
    from kernels.torch_stats import logsumexp_argmax
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(37, k, generator=gen) * 8
    x[3] = 2.0                                                        # a row of ties: index 0
    x[5, k // 2] = x[5, k - 1] = 100.0                                # tie between two maxima
    lse, idx = logsumexp_argmax(x.clone())
    torch.testing.assert_close(lse, torch.logsumexp(x.double(), -1).float(), atol=2e-5, rtol=2e-6)
    assert torch.equal(idx, x.argmax(-1)) and idx[5] == k // 2


def test_failed_kernel_build_falls_back_to_torch_ops(monkeypatch, tmp_path):
    """No compiler (or any build error) at set-up: a one-line reason; an analysis that finds no build
    never compiles, says why once, and the statistics still come out right."""
    from kernels import cpu_rowstats

    def broken(**kw):
        raise RuntimeError("Error building extension\ng++: command not found")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))          # nothing built there
    monkeypatch.setattr(cpu_rowstats, "_STATE", {})
    monkeypatch.setattr("torch.utils.cpp_extension.load", broken)
    monkeypatch.setattr(cpu_rowstats, "_cpu_has_avx2_fma", lambda: True)
    assert cpu_rowstats.report(build_if_missing=True) == "fused CPU row kernel: not used (build failed: g++: command not found)"
    assert cpu_rowstats.row_kernel() is None
    assert cpu_rowstats.unavailable_reason() == "not built (run `make setup`)"
    q, k, v, kv = _inputs(40, 16, 2, 3)
    got = attention_stats_torch(q, k, v, scale=0.25, causal=True, key_valid=kv)
    ref = attention_stats_dense(q, k, v, scale=0.25, causal=True, key_valid=kv)
    assert_stats_close(got, ref)


def test_kernel_build_is_keyed_by_source_and_torch(monkeypatch, tmp_path):
    """Two checkouts with different sources get different build folders (no rebuilding each other's)."""
    from kernels import cpu_rowstats
    a = cpu_rowstats.build_name()
    src = tmp_path / "cpu_rowstats.cpp"
    src.write_bytes(cpu_rowstats.SOURCE.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(cpu_rowstats, "SOURCE", src)
    assert cpu_rowstats.build_name() != a and cpu_rowstats.build_name().startswith("attnvis_cpu_rowstats_")
