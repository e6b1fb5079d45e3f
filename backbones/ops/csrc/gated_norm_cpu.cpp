// longstream CPU kernel: the gated RMSNorm at the output of a Mamba-2 layer (Dao & Gu 2024),
// out = rmsnorm(x * silu(z)) * w per group of `gs` channels, one row at a time so the gate, the
// sum of squares and the scaling are one pass each over a row in L1 (instead of four passes over
// the whole (rows, d) tensor).
//
// gated_rmsnorm_fwd(x (N, d), z (N, d), w (d), gs, eps) -> {out (N, d), inverse RMS r (N, d / gs)}
// x and z may have any row stride (z is often a slice of the input projection); their rows are dense.
// Registered as torch.ops.longstream_ops.gated_rmsnorm_fwd (a fragment of the library).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <cmath>
#include <vector>

namespace {

#include "avx2_math.h"  // silu256, hsum256

std::vector<at::Tensor> gated_rmsnorm_fwd(at::Tensor x, at::Tensor z, at::Tensor w, int64_t gs, double eps) {
  for (const auto* t : {&x, &z})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 2 && t->stride(1) == 1,
                "gated_rmsnorm_fwd: x and z must be float32 CPU (rows, d) with dense rows");
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == at::kFloat && w.numel() == x.size(1), "w must be (d,) float32");
  const int64_t N = x.size(0), d = x.size(1), ng = d / gs;
  TORCH_CHECK(z.sizes() == x.sizes() && gs > 0 && d % gs == 0, "gated_rmsnorm_fwd: shapes do not match");
  auto out = at::empty({N, d}, x.options());
  auto r = at::empty({N, ng}, x.options());
  const float *xp = x.data_ptr<float>(), *zp = z.data_ptr<float>(), *wp = w.data_ptr<float>();
  float *op = out.data_ptr<float>(), *rp = r.data_ptr<float>();
  const int64_t sx = x.stride(0), sz = z.stride(0);
  const float e = float(eps), inv = 1.0f / float(gs);
  at::parallel_for(0, N, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float *xr = xp + i * sx, *zr = zp + i * sz;
      float* o = op + i * d;
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs, c1 = c0 + gs;
        int64_t c = c0;
        __m256 acc = _mm256_setzero_ps();
        for (; c + 8 <= c1; c += 8) {
          const __m256 u = _mm256_mul_ps(silu256(_mm256_loadu_ps(zr + c)), _mm256_loadu_ps(xr + c));
          _mm256_storeu_ps(o + c, u);
          acc = _mm256_fmadd_ps(u, u, acc);
        }
        float ss = hsum256(acc);
        for (; c < c1; ++c) {
          const float u = xr[c] * zr[c] / (1.0f + std::exp(-zr[c]));
          o[c] = u;
          ss += u * u;
        }
        const float rv = 1.0f / std::sqrt(ss * inv + e);
        rp[i * ng + gi] = rv;
        const __m256 vr = _mm256_set1_ps(rv);
        for (c = c0; c + 8 <= c1; c += 8)
          _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(o + c), vr), _mm256_loadu_ps(wp + c)));
        for (; c < c1; ++c) o[c] = o[c] * rv * wp[c];
      }
    }
  });
  return {out, r};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longstream_ops, m) {
  m.def("gated_rmsnorm_fwd(Tensor x, Tensor z, Tensor w, int gs, float eps) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) { m.impl("gated_rmsnorm_fwd", &gated_rmsnorm_fwd); }
