// Fused softmax and row statistics of one chunk of attention logits, for the CPU torch backend.
// Built at first use by kernels/cpu_rowstats.py (torch.utils.cpp_extension, -mavx2 -mfma); the
// pure-torch code in kernels/torch_stats.py computes the same numbers and is the fallback.
//
// Each row of s (a query row of one head, keys 0..K-1 already masked with a large negative value)
// stays in L1/L2 for its three sweeps: max and first argmax; exp, sum and sum e*z; normalise in
// place while accumulating E[kpos] and the prefix masses at the row's sorted key-index thresholds.
// Torch ops would make ~10 passes over the chunk, each one a trip through L3 and a dispatch.
// block_sum_max then reads the probabilities once for the pooled maps' sums and maxima (two torch passes).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <limits>

extern "C" __m256 Sleef_expf8_u10(__m256);  // the exp of torch's own vectorised softmax (1 ulp)

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

inline float hmax(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_max_ps(lo, hi);
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_max_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// One row: x [K] in, probabilities out. thr [T] sorted key-index thresholds (clamped here to K);
// mass[k] = sum of p_j over j < thr[k]. kp [K] key positions.
void one_row(float* x, int64_t K, const float* kp, const int64_t* thr, int64_t T, float* mass,
             float& m_out, int64_t& idx_out, float& logl_out, float& ent_out, float& ekpos_out) {
  int64_t j = 0;
  __m256 vm = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (; j + 8 <= K; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  float m = hmax(vm);
  for (; j < K; ++j) m = x[j] > m ? x[j] : m;
  int64_t idx = -1;                        // first index of the max, as torch.argmax
  const __m256 vmm = _mm256_set1_ps(m);
  for (j = 0; j + 8 <= K; j += 8) {
    int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), vmm, _CMP_EQ_OQ));
    if (hit) {
      idx = j + __builtin_ctz(hit);
      break;
    }
  }
  for (; idx < 0 && j < K; ++j)
    if (x[j] == m) idx = j;
  if (idx < 0) idx = 0;                    // NaN row: nothing matched

  __m256 vl = _mm256_setzero_ps(), vw = _mm256_setzero_ps();
  for (j = 0; j + 8 <= K; j += 8) {
    __m256 z = _mm256_sub_ps(_mm256_loadu_ps(x + j), vmm);
    __m256 e = Sleef_expf8_u10(z);
    _mm256_storeu_ps(x + j, e);
    vl = _mm256_add_ps(vl, e);
    vw = _mm256_fmadd_ps(e, z, vw);
  }
  float l = hsum(vl), w = hsum(vw);
  for (; j < K; ++j) {
    float z = x[j] - m, e = std::exp(z);
    x[j] = e;
    l += e;
    w += e * z;
  }

  const float inv = 1.0f / l;
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256 vek = _mm256_setzero_ps();
  float run = 0.0f, ek = 0.0f;
  j = 0;
  for (int64_t k = 0; k <= T; ++k) {
    int64_t end = k < T ? std::min<int64_t>(std::max<int64_t>(thr[k], 0), K) : K;
    __m256 vseg = _mm256_setzero_ps();
    float seg = 0.0f;
    for (; j + 8 <= end; j += 8) {
      __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + j), vinv);
      _mm256_storeu_ps(x + j, p);
      vseg = _mm256_add_ps(vseg, p);
      vek = _mm256_fmadd_ps(p, _mm256_loadu_ps(kp + j), vek);
    }
    for (; j < end; ++j) {
      float p = x[j] * inv;
      x[j] = p;
      seg += p;
      ek += p * kp[j];
    }
    run += hsum(vseg) + seg;
    if (k < T) mass[k] = run;
  }
  m_out = m;
  idx_out = idx;
  logl_out = std::log(l);
  ent_out = logl_out - w * inv;
  ekpos_out = ek + hsum(vek);
}

}  // namespace

// s [R, K] fp32 contiguous, rows ordered (batch, head, query); rows_per_batch = R / B;
// rr = query rows per (batch, head). kpos [B, >=K] fp32; thr [B, rr, T] int64 sorted per row.
// Outputs (preallocated, contiguous): mx, logl, ent, ekpos [R] fp32; idx [R] int64; mass [R, T] fp32.
void softmax_row_stats(at::Tensor s, at::Tensor kpos, at::Tensor thr, int64_t rows_per_batch, int64_t rr,
                       at::Tensor mx, at::Tensor idx, at::Tensor logl, at::Tensor ent, at::Tensor ekpos,
                       at::Tensor mass) {
  TORCH_CHECK(s.is_contiguous() && s.scalar_type() == at::kFloat && s.dim() == 2, "s: contiguous fp32 [R, K]");
  TORCH_CHECK(kpos.is_contiguous() && kpos.scalar_type() == at::kFloat, "kpos: contiguous fp32");
  TORCH_CHECK(thr.is_contiguous() && thr.scalar_type() == at::kLong && thr.dim() == 3, "thr: int64 [B, rr, T]");
  const int64_t R = s.size(0), K = s.size(1), T = thr.size(2), kstride = kpos.size(-1);
  TORCH_CHECK(kstride >= K && thr.size(1) == rr && R % rows_per_batch == 0 && rows_per_batch % rr == 0,
              "softmax_row_stats: inconsistent shapes");
  TORCH_CHECK(mass.is_contiguous() && mass.numel() == R * T, "mass: contiguous [R, T]");
  float* ps = s.data_ptr<float>();
  const float* pk = kpos.data_ptr<float>();
  const int64_t* pt = thr.data_ptr<int64_t>();
  float *pm = mx.data_ptr<float>(), *pl = logl.data_ptr<float>(), *pe = ent.data_ptr<float>();
  float *pek = ekpos.data_ptr<float>(), *pms = mass.data_ptr<float>();
  int64_t* pi = idx.data_ptr<int64_t>();
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / rows_per_batch, i = r % rr;
      one_row(ps + r * K, K, pk + b * kstride, pt + (b * rr + i) * T, T, pms + r * T,
              pm[r], pi[r], pl[r], pe[r], pek[r]);
    }
  });
}

// Column sums and maxima of row blocks, in one sweep: p [G, R, K] fp32 contiguous (G = batch x heads),
// bounds [nb + 1] int64 row offsets of the blocks (0 = bounds[0] < ... < bounds[nb] = R); out_sum and
// out_max [G, nb, K]. Work is split over (g, column tile), so no two threads write one output. p >= 0
// (probabilities), so a zero start is the max of a non-empty block, as torch's amax gives.
void block_sum_max(at::Tensor p, at::Tensor bounds, at::Tensor out_sum, at::Tensor out_max) {
  TORCH_CHECK(p.is_contiguous() && p.scalar_type() == at::kFloat && p.dim() == 3, "p: contiguous fp32 [G, R, K]");
  TORCH_CHECK(bounds.is_contiguous() && bounds.scalar_type() == at::kLong, "bounds: int64");
  const int64_t G = p.size(0), R = p.size(1), K = p.size(2), nb = bounds.numel() - 1;
  TORCH_CHECK(out_sum.is_contiguous() && out_max.is_contiguous() && out_sum.numel() == G * nb * K &&
              out_max.numel() == G * nb * K, "block_sum_max: outputs [G, nb, K]");
  const float* pp = p.data_ptr<float>();
  const int64_t* pb = bounds.data_ptr<int64_t>();
  float *ps = out_sum.data_ptr<float>(), *pm = out_max.data_ptr<float>();
  constexpr int64_t TILE = 512;                 // columns per task: 2 KB of each row, 2 x 2 KB of output
  const int64_t tiles = (K + TILE - 1) / TILE;
  at::parallel_for(0, G * tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / tiles, c0 = (t % tiles) * TILE, c1 = std::min(K, c0 + TILE);
      for (int64_t blk = 0; blk < nb; ++blk) {
        float* os = ps + (g * nb + blk) * K;
        float* om = pm + (g * nb + blk) * K;
        for (int64_t c = c0; c < c1; ++c) os[c] = om[c] = 0.0f;
        for (int64_t r = pb[blk]; r < pb[blk + 1]; ++r) {
          const float* x = pp + (g * R + r) * K;
          int64_t c = c0;
          for (; c + 8 <= c1; c += 8) {
            __m256 v = _mm256_loadu_ps(x + c);
            _mm256_storeu_ps(os + c, _mm256_add_ps(_mm256_loadu_ps(os + c), v));
            _mm256_storeu_ps(om + c, _mm256_max_ps(_mm256_loadu_ps(om + c), v));
          }
          for (; c < c1; ++c) {
            os[c] += x[c];
            om[c] = x[c] > om[c] ? x[c] : om[c];
          }
        }
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_row_stats", &softmax_row_stats, "fused softmax and row statistics of a logit chunk");
  m.def("block_sum_max", &block_sum_max, "column sums and maxima of row blocks in one sweep");
}
