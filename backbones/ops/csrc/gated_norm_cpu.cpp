// longstream CPU kernel: the gated RMSNorm at the output of a Mamba-2 layer (Dao & Gu 2024),
// out = rmsnorm(x * silu(z)) * w per group of `gs` channels, and the plain RMSNorm of every block
// (z empty: out = rmsnorm(x) * w), one row at a time so the gate, the sum of squares and the
// scaling are one pass each over a row in L1 (instead of four passes over the whole (rows, d)
// tensor, and about ten in the composite's backward).
//
// gated_rmsnorm_fwd(x (N, d), z (N, d) or empty, w (d), gs, eps) -> {out (N, d), inverse RMS r (N, d / gs)}
// gated_rmsnorm_bwd(go (N, d), x, z or empty, w, r) -> {gx (N, d), gz (N, d) or empty, gw (d)}: the gate
//   is recomputed from (x, z) and the normalised row from r, one pass per row; gw is summed per
//   thread, then reduced.
// x and z may have any row stride (z is often a slice of the input projection); their rows are dense.
// Large outputs come from the block pool of scan_cpu.cpp (pool.h).
// Registered as torch.ops.longstream_ops.gated_rmsnorm_{fwd,bwd} (a fragment of the library).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "pool.h"  // longstream_empty_big

namespace {

#include "avx2_math.h"  // silu256, hsum256

std::vector<at::Tensor> gated_rmsnorm_fwd(at::Tensor x, at::Tensor z, at::Tensor w, int64_t gs, double eps) {
  const bool has_z = z.numel() > 0;
  for (const auto* t : {&x, &z})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && (t->dim() == 2 || t == &z && !has_z) &&
                    (t->stride(-1) == 1 || t == &z && !has_z),
                "gated_rmsnorm_fwd: x and z must be float32 CPU (rows, d) with dense rows");
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == at::kFloat && w.numel() == x.size(1), "w must be (d,) float32");
  const int64_t N = x.size(0), d = x.size(1);
  TORCH_CHECK((!has_z || z.sizes() == x.sizes()) && gs > 0 && d % gs == 0, "gated_rmsnorm_fwd: shapes do not match");
  const int64_t ng = d / gs;
  auto out = longstream_empty_big({N, d});
  auto r = at::empty({N, ng}, x.options());
  const float *xp = x.data_ptr<float>(), *zp = has_z ? z.data_ptr<float>() : nullptr, *wp = w.data_ptr<float>();
  float *op = out.data_ptr<float>(), *rp = r.data_ptr<float>();
  const int64_t sx = x.stride(0), sz = has_z ? z.stride(0) : 0;
  const float e = float(eps), inv = 1.0f / float(gs);
  at::parallel_for(0, N, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float *xr = xp + i * sx, *zr = has_z ? zp + i * sz : nullptr;
      float* o = op + i * d;
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs, c1 = c0 + gs;
        int64_t c = c0;
        __m256 acc = _mm256_setzero_ps();
        if (has_z) {
          for (; c + 8 <= c1; c += 8) {
            const __m256 u = _mm256_mul_ps(silu256(_mm256_loadu_ps(zr + c)), _mm256_loadu_ps(xr + c));
            _mm256_storeu_ps(o + c, u);
            acc = _mm256_fmadd_ps(u, u, acc);
          }
        } else {  // plain RMSNorm: the row is read again below instead of a gated copy
          for (; c + 8 <= c1; c += 8) {
            const __m256 u = _mm256_loadu_ps(xr + c);
            acc = _mm256_fmadd_ps(u, u, acc);
          }
        }
        float ss = hsum256(acc);
        for (; c < c1; ++c) {
          const float u = has_z ? xr[c] * zr[c] / (1.0f + std::exp(-zr[c])) : xr[c];
          o[c] = u;
          ss += u * u;
        }
        const float rv = 1.0f / std::sqrt(ss * inv + e);
        rp[i * ng + gi] = rv;
        const __m256 vr = _mm256_set1_ps(rv);
        const float* src = has_z ? o : xr;
        for (c = c0; c + 8 <= c1; c += 8)
          _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(src + c), vr), _mm256_loadu_ps(wp + c)));
        for (; c < c1; ++c) o[c] = o[c] * rv * wp[c];
      }
    }
  });
  return {out, r};
}

std::vector<at::Tensor> gated_rmsnorm_bwd(at::Tensor go, at::Tensor x, at::Tensor z, at::Tensor w, at::Tensor r) {
  const bool has_z = z.numel() > 0;
  for (const auto* t : {&go, &x, &z})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && (t->dim() == 2 || t == &z && !has_z) &&
                    (t->stride(-1) == 1 || t == &z && !has_z),
                "gated_rmsnorm_bwd: go, x and z must be float32 CPU (rows, d) with dense rows");
  const int64_t N = x.size(0), d = x.size(1);
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == at::kFloat && w.numel() == d, "w must be (d,) float32");
  TORCH_CHECK(go.sizes() == x.sizes() && (!has_z || z.sizes() == x.sizes()) && r.is_contiguous() && r.dim() == 2 &&
                  r.size(0) == N && r.size(1) > 0 && d % r.size(1) == 0,
              "gated_rmsnorm_bwd: shapes do not match");
  const int64_t ng = r.size(1), gs = d / ng;
  auto gx = longstream_empty_big({N, d});
  auto gz = has_z ? longstream_empty_big({N, d}) : at::empty({0}, x.options());
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  std::vector<float> gw_part(nt * d, 0.0f);  // per-thread partial sums of gw
  const float *gop = go.data_ptr<float>(), *xp = x.data_ptr<float>(), *zp = has_z ? z.data_ptr<float>() : nullptr,
              *wp = w.data_ptr<float>(), *rp = r.data_ptr<float>();
  float *gxp = gx.data_ptr<float>(), *gzp = has_z ? gz.data_ptr<float>() : nullptr;
  const int64_t sg = go.stride(0), sx = x.stride(0), sz = has_z ? z.stride(0) : 0;
  const float inv = 1.0f / float(gs);
  at::parallel_for(0, N, 256, [&](int64_t r0, int64_t r1) {
    float* gwp = gw_part.data() + std::min<int64_t>(at::get_thread_num(), nt - 1) * d;
    std::vector<float> sbuf(gs), nbuf(gs);  // silu(z), normalised row of one group
    for (int64_t i = r0; i < r1; ++i) {
      const float *gr = gop + i * sg, *xr = xp + i * sx, *zr = has_z ? zp + i * sz : nullptr;
      float *gxr = gxp + i * d, *gzr = has_z ? gzp + i * d : nullptr;
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs;
        const float rv = rp[i * ng + gi];
        const __m256 vr = _mm256_set1_ps(rv);
        int64_t c = 0;
        __m256 acc = _mm256_setzero_ps();
        for (; c + 8 <= gs; c += 8) {  // nh = x silu(z) r, gw += go nh, dot += go w nh
          const int64_t k = c0 + c;
          const __m256 sv = has_z ? silu256(_mm256_loadu_ps(zr + k)) : _mm256_set1_ps(1.0f);
          const __m256 nh = _mm256_mul_ps(_mm256_mul_ps(sv, _mm256_loadu_ps(xr + k)), vr);
          const __m256 g = _mm256_loadu_ps(gr + k);
          _mm256_storeu_ps(sbuf.data() + c, sv);
          _mm256_storeu_ps(nbuf.data() + c, nh);
          _mm256_storeu_ps(gwp + k, _mm256_fmadd_ps(g, nh, _mm256_loadu_ps(gwp + k)));
          acc = _mm256_fmadd_ps(_mm256_mul_ps(g, _mm256_loadu_ps(wp + k)), nh, acc);
        }
        float dot = hsum256(acc);
        for (; c < gs; ++c) {
          const int64_t k = c0 + c;
          const float sv = has_z ? zr[k] / (1.0f + std::exp(-zr[k])) : 1.0f, nh = sv * xr[k] * rv;
          sbuf[c] = sv, nbuf[c] = nh;
          gwp[k] += gr[k] * nh;
          dot += gr[k] * wp[k] * nh;
        }
        dot *= inv;
        const __m256 vd = _mm256_set1_ps(dot), one = _mm256_set1_ps(1.0f);
        for (c = 0; c + 8 <= gs; c += 8) {  // gu = (go w - nh dot) r; gx = gu silu(z); gz = gu x silu'(z)
          const int64_t k = c0 + c;
          const __m256 gu = _mm256_mul_ps(
              _mm256_fnmadd_ps(_mm256_loadu_ps(nbuf.data() + c), vd,
                               _mm256_mul_ps(_mm256_loadu_ps(gr + k), _mm256_loadu_ps(wp + k))), vr);
          if (!has_z) {  // plain RMSNorm: gx is the gradient of the normalised input itself
            _mm256_storeu_ps(gxr + k, gu);
            continue;
          }
          const __m256 zv = _mm256_loadu_ps(zr + k), sv = _mm256_loadu_ps(sbuf.data() + c);
          // silu'(z) = sig (1 + z (1 - sig)) with sig = silu(z) / z, written as sig + silu (1 - sig)
          const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), zv))));
          const __m256 ds = _mm256_fmadd_ps(sv, _mm256_sub_ps(one, sig), sig);
          _mm256_storeu_ps(gxr + k, _mm256_mul_ps(gu, sv));
          _mm256_storeu_ps(gzr + k, _mm256_mul_ps(_mm256_mul_ps(gu, _mm256_loadu_ps(xr + k)), ds));
        }
        for (; c < gs; ++c) {
          const int64_t k = c0 + c;
          const float gu = (gr[k] * wp[k] - nbuf[c] * dot) * rv;
          if (!has_z) {
            gxr[k] = gu;
            continue;
          }
          const float sig = 1.0f / (1.0f + std::exp(-zr[k])), sv = sbuf[c];
          gxr[k] = gu * sv;
          gzr[k] = gu * xr[k] * (sig + sv * (1.0f - sig));
        }
      }
    }
  });
  auto gw = at::zeros({d}, x.options());
  float* gwo = gw.data_ptr<float>();
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t k = 0; k < d; ++k) gwo[k] += gw_part[t * d + k];
  return {gx, gz, gw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longstream_ops, m) {
  m.def("gated_rmsnorm_fwd(Tensor x, Tensor z, Tensor w, int gs, float eps) -> Tensor[]");
  m.def("gated_rmsnorm_bwd(Tensor go, Tensor x, Tensor z, Tensor w, Tensor r) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) {
  m.impl("gated_rmsnorm_fwd", &gated_rmsnorm_fwd);
  m.impl("gated_rmsnorm_bwd", &gated_rmsnorm_bwd);
}
