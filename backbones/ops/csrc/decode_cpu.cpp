// longstream CPU decode kernel: one streaming step of a Mamba layer (Gu & Dao 2023) between its
// in_proj and out_proj, fused into one call so token-by-token decoding is not bound by the
// per-op dispatch of ~30 small PyTorch ops per layer.
//
// Axis legend: b batch, e inner channels, n state size, r dt rank, k conv width.
// Inputs (contiguous float32):
//   xz (b, 2e)         in_proj output: stream x = xz[:, :e], gate z = xz[:, e:]
//   conv (b, e, k-1)   conv window (the last k-1 stream inputs), read only
//   conv_w (e, k), conv_b (e)
//   xproj_w (r+2n, e)  x_proj weight: dt_low | B | C
//   dtproj_wt (r, e)   dt_proj weight transposed (so each rank's column is contiguous)
//   dt_b (e), A (e, n) (= -exp(A_log)), D (e)
//   ssm (b, e, n)      SSM state, read only
// Step per row:  u = silu(conv(x));  [dt_low, B, C] = xproj_w u;  dt = softplus(dtproj dt_low + dt_b)
//                h = exp(dt A) h + dt u B;  y = (C . h + D u) * silu(z)
// Single-threaded on purpose: a step is ~10-50 us of work, less than a thread-pool hand-off costs
// on a busy 2-core machine (the projections around it are the threaded GEMVs).
// Returns {y (b, e), new conv (b, e, k-1), new ssm (b, e, n)} — the state is never written in
// place, so a caller may step twice from one state. Needs n % 8 == 0 and e % 8 == 0.
// Also rms_norm_rows (the RMSNorm of one token per row) and linear_rows (a single-threaded GEMV for
// the small projections). Registered as torch.ops.longstream_ops.{mamba_step, rms_norm_rows, linear_rows} (a fragment of the library in scan_cpu.cpp).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <immintrin.h>
#include <cmath>
#include <vector>

namespace {

constexpr int kV = 8;  // floats per AVX2 register

#include "avx2_math.h"  // exp256, log256, softplus256, silu256, hsum256, FtzGuard

void need(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == dim,
              name, " must be a contiguous float32 CPU tensor with ", dim, " dims");
}

std::vector<at::Tensor> mamba_step(const at::Tensor& xz, const at::Tensor& conv, const at::Tensor& conv_w,
                                   const at::Tensor& conv_b, const at::Tensor& xproj_w, const at::Tensor& dtproj_wt,
                                   const at::Tensor& dt_b, const at::Tensor& A, const at::Tensor& D,
                                   const at::Tensor& ssm) {
  need(xz, "xz", 2); need(conv, "conv", 3); need(conv_w, "conv_w", 2); need(conv_b, "conv_b", 1);
  need(xproj_w, "xproj_w", 2); need(dtproj_wt, "dtproj_wt", 2); need(dt_b, "dt_b", 1);
  need(A, "A", 2); need(D, "D", 1); need(ssm, "ssm", 3);
  const int64_t Bsz = xz.size(0), E = xz.size(1) / 2, K = conv_w.size(1), N = A.size(1);
  const int64_t R = dtproj_wt.size(0);
  TORCH_CHECK(E % kV == 0 && N % kV == 0, "mamba_step needs e % 8 == 0 and n % 8 == 0");
  TORCH_CHECK(xproj_w.size(0) == R + 2 * N && xproj_w.size(1) == E, "x_proj weight shape");
  TORCH_CHECK(conv.size(1) == E && conv.size(2) == K - 1 && ssm.size(1) == E && ssm.size(2) == N, "state shape");
  auto y = at::empty({Bsz, E}, xz.options());
  auto conv_new = at::empty_like(conv);
  auto ssm_new = at::empty_like(ssm);
  std::vector<float> u(E), dt(E), xd(R + 2 * N);
  const float *pxz = xz.data_ptr<float>(), *pc = conv.data_ptr<float>(), *pw = conv_w.data_ptr<float>();
  const float *pcb = conv_b.data_ptr<float>(), *pxw = xproj_w.data_ptr<float>(), *pdw = dtproj_wt.data_ptr<float>();
  const float *pdb = dt_b.data_ptr<float>(), *pA = A.data_ptr<float>(), *pD = D.data_ptr<float>();
  const float* ph = ssm.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pcn = conv_new.data_ptr<float>(), *phn = ssm_new.data_ptr<float>();
  for (int64_t b = 0; b < Bsz; ++b) {
    FtzGuard ftz;
    const float* x = pxz + b * 2 * E;
    const float* z = x + E;
    // conv (scalar over the k taps) + shifted window, then SiLU vectorised
    for (int64_t c = 0; c < E; ++c) {
      const float* win = pc + (b * E + c) * (K - 1);
      float* wn = pcn + (b * E + c) * (K - 1);
      const float* w = pw + c * K;
      float acc = pcb[c];
      for (int64_t k = 0; k < K - 1; ++k) acc += w[k] * win[k];
      acc += w[K - 1] * x[c];
      for (int64_t k = 0; k + 1 < K - 1; ++k) wn[k] = win[k + 1];
      if (K > 1) wn[K - 2] = x[c];
      u[c] = acc;
    }
    for (int64_t c = 0; c < E; c += kV) _mm256_storeu_ps(&u[c], silu256(_mm256_loadu_ps(&u[c])));
    // x_dbl = xproj_w u: r + 2n dot products over e
    {
      for (int64_t j = 0; j < R + 2 * N; ++j) {
        const float* wr = pxw + j * E;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 2 * kV <= E; c += 2 * kV) {
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + c), _mm256_loadu_ps(&u[c]), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + c + kV), _mm256_loadu_ps(&u[c + kV]), a1);
        }
        for (; c < E; c += kV) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + c), _mm256_loadu_ps(&u[c]), a0);
        xd[j] = hsum256(_mm256_add_ps(a0, a1));
      }
    }
    const float* Bv = xd.data() + R;
    const float* Cv = Bv + N;
    // dt = softplus(dt_b + sum_r dt_low[r] * dtproj_wt[r, :]): axpys streaming each row once
    {
      const int64_t g0 = 0, g1 = E / kV;
      for (int64_t c = g0 * kV; c < g1 * kV; c += kV) _mm256_storeu_ps(&dt[c], _mm256_loadu_ps(pdb + c));
      for (int64_t r = 0; r < R; ++r) {
        const __m256 a = _mm256_set1_ps(xd[r]);
        const float* wr = pdw + r * E;
        for (int64_t c = g0 * kV; c < g1 * kV; c += kV)
          _mm256_storeu_ps(&dt[c], _mm256_fmadd_ps(a, _mm256_loadu_ps(wr + c), _mm256_loadu_ps(&dt[c])));
      }
      for (int64_t c = g0 * kV; c < g1 * kV; c += kV) _mm256_storeu_ps(&dt[c], softplus256(_mm256_loadu_ps(&dt[c])));
    }
    // the state update and output, per block of 8 channels
    {
      for (int64_t g = 0; g < E / kV; ++g) {
        const int64_t c0 = g * kV;
        for (int64_t c = c0; c < c0 + kV; ++c) {
          const __m256 vdt = _mm256_set1_ps(dt[c]), vdu = _mm256_set1_ps(dt[c] * u[c]);
          const float* hr = ph + (b * E + c) * N;
          float* hn = phn + (b * E + c) * N;
          const float* ar = pA + c * N;
          __m256 s = _mm256_setzero_ps();
          for (int64_t i = 0; i < N; i += kV) {
            __m256 h = _mm256_mul_ps(_mm256_loadu_ps(hr + i), exp256(_mm256_mul_ps(vdt, _mm256_loadu_ps(ar + i))));
            h = _mm256_fmadd_ps(vdu, _mm256_loadu_ps(Bv + i), h);
            _mm256_storeu_ps(hn + i, h);
            s = _mm256_fmadd_ps(h, _mm256_loadu_ps(Cv + i), s);
          }
          py[b * E + c] = hsum256(s) + pD[c] * u[c];
        }
        float* yr = py + b * E + c0;
        _mm256_storeu_ps(yr, _mm256_mul_ps(_mm256_loadu_ps(yr), silu256(_mm256_loadu_ps(z + c0))));
      }
    }
  }
  return {y, conv_new, ssm_new};
}

// RMSNorm of rows: x (b, d) -> x * rsqrt(mean(x^2) + eps) * w, float32 (one call per layer in
// decoding instead of the ~8 ops of the composite).
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps) {
  need(x, "x", 2); need(w, "weight", 1);
  const int64_t Bsz = x.size(0), Dm = x.size(1);
  TORCH_CHECK(w.size(0) == Dm, "rms_norm weight must have ", Dm, " entries");
  auto y = at::empty_like(x);
  const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
  float* py = y.data_ptr<float>();
  for (int64_t b = 0; b < Bsz; ++b) {
    const float* xr = px + b * Dm;
    float* yr = py + b * Dm;
    double ss = 0.0;
    for (int64_t i = 0; i < Dm; ++i) ss += double(xr[i]) * xr[i];
    const float s = float(1.0 / std::sqrt(ss / double(Dm) + eps));
    for (int64_t i = 0; i < Dm; ++i) yr[i] = xr[i] * s * pw[i];
  }
  return y;
}

// y = x W^T + bias for a few rows x (b, i), W (o, i), single-threaded: the small projections of a
// decode step, where a threaded GEMV costs more in hand-offs than it saves (i % 8 == 0).
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  need(x, "x", 2); need(w, "weight", 2);
  const int64_t Bsz = x.size(0), I = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == I && I % kV == 0, "linear_rows needs weight (o, i) with i % 8 == 0");
  const bool has_b = bias.numel() > 0;
  if (has_b) need(bias, "bias", 1);
  auto y = at::empty({Bsz, O}, x.options());
  const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
  const float* pb = has_b ? bias.data_ptr<float>() : nullptr;
  float* py = y.data_ptr<float>();
  for (int64_t b = 0; b < Bsz; ++b) {
    const float* xr = px + b * I;
    int64_t o = 0;
    for (; o + 4 <= O; o += 4) {  // four output rows share each load of x
      const float *w0 = pw + o * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (int64_t i = 0; i < I; i += kV) {
        const __m256 xv = _mm256_loadu_ps(xr + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
      }
      float* yr = py + b * O + o;
      yr[0] = hsum256(a0); yr[1] = hsum256(a1); yr[2] = hsum256(a2); yr[3] = hsum256(a3);
    }
    for (; o < O; ++o) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t i = 0; i < I; i += kV) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pw + o * I + i), _mm256_loadu_ps(xr + i), a0);
      py[b * O + o] = hsum256(a0);
    }
    if (has_b)
      for (int64_t j = 0; j < O; ++j) py[b * O + j] += pb[j];
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longstream_ops, m) {
  m.def("mamba_step(Tensor xz, Tensor conv, Tensor conv_w, Tensor conv_b, Tensor xproj_w, Tensor dtproj_wt, "
        "Tensor dt_b, Tensor A, Tensor D, Tensor ssm) -> Tensor[]");
  m.def("rms_norm_rows(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("linear_rows(Tensor x, Tensor w, Tensor bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) {
  m.impl("mamba_step", &mamba_step);
  m.impl("rms_norm_rows", &rms_norm_rows);
  m.impl("linear_rows", &linear_rows);
}
