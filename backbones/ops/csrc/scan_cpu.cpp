// longstream CPU kernels: the sequential selective-scan recurrence (Mamba, Gu & Dao 2023)
// forward + backward, and a causal depthwise conv1d forward + backward, for time-major float32 tensors.
//
// Axis legend: b batch, l length, e inner channels, n state size, k conv width.
// Layout (all contiguous float32):
//   u, dt, y        (b, l, e)    time-major, channels contiguous
//   At              (n, e)       A transposed, so a row of A over channels is contiguous
//   Bm, Cm          (b, l, n)
//   h0, hT, dh      (b, n, e)    state, channels contiguous
//   ckpt            (b, nc, n, e) state at the start of each chunk (for the backward)
//
// The recurrence per channel e and state n:   h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,
//                                             y_t = sum_n C_t[n] h_t[n].
// Work is split over (batch, block of 32 channels); each task walks the whole sequence and
// keeps its state block (n x 32 floats) in L1. The decays exp(dt A) = 2^(dt A log2 e) use a
// vectorised exp2 (degree-6 polynomial + exponent-bit add) with the argument clamped to
// [-115, 127] (2^-115 ~ e^-80) and flush-to-zero on, so decays that underflow never hit slow
// denormal arithmetic; the rest of the step is FMAs. Registered as torch.ops.longstream_ops.*.
// Built only where AVX2 + FMA exist; otherwise Python falls back to pure PyTorch.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <cmath>
#include <type_traits>
#include <vector>

#include "pool.h"

#if !defined(__AVX2__) || !defined(__FMA__)
#error "longstream scan kernel needs AVX2 + FMA"
#endif

namespace {

constexpr int kBlock = 32;             // channels per task
constexpr int kVec = 8;                // floats per AVX2 register
constexpr int kMaxV = kBlock / kVec;   // registers per block row
constexpr float kLog2e = 1.44269504088896341f;

#include "avx2_math.h"  // exp256, exp2_256, log256, softplus256, silu256, hsum256, FtzGuard

// Each task walks time with a stride of one (b, l, e) row (E floats) and reads / writes only its
// block of channels (nv * 32 bytes) per row: the hardware prefetchers do not follow that stride
// across 4 KiB pages, so without these hints every row is a cache (and often TLB) miss that the
// scan's short dependency chain cannot hide. kAhead rows ahead covers the memory latency.
constexpr int64_t kAhead = 4;
template <int nv>
static inline void prefetch_row(const float* p, bool write = false) {
  for (int v = 0; v < nv; v += 2) {  // one 64-byte line holds two registers of channels
    if (write) __builtin_prefetch(p + v * kVec, 1, 3);
    else __builtin_prefetch(p + v * kVec, 0, 3);
  }
}

// A pool of large float32 blocks, reused across calls. A fresh (l, e) activation at long lengths
// is tens to hundreds of MB; glibc maps it fresh and returns it to the OS when it dies, so every
// call faults all of its pages in again (one fault and one zeroed page per 4 KiB: ~0.5 s of
// kernel time per Mamba forward at 64K tokens on the machine this was measured on). A block
// freed here is kept (exact byte size, up to LONGSTREAM_POOL_MB MiB in total, default 2048; 0
// turns the pool off) and handed to the next tensor of that size; see ops/bigbuf.py.
constexpr size_t kPoolMin = (size_t)4 << 20;  // smaller blocks come from glibc's heap, already reused
struct BlockPool {
  std::mutex mu;
  std::list<std::pair<size_t, void*>> free_blocks;  // most recently freed first
  size_t cached = 0;
};
BlockPool& pool() {
  static BlockPool* p = new BlockPool();  // never destroyed: tensors may die at interpreter exit
  return *p;
}
size_t pool_cap() {
  const char* v = std::getenv("LONGSTREAM_POOL_MB");
  if (!v || !v[0]) return (size_t)2048 << 20;
  return (size_t)std::max(0L, std::atol(v)) << 20;
}
void pool_release(void* ptr, size_t n) {
  std::vector<void*> drop;
  {
    BlockPool& P = pool();
    std::lock_guard<std::mutex> g(P.mu);
    P.free_blocks.emplace_front(n, ptr);
    P.cached += n;
    const size_t cap = pool_cap();
    while (P.cached > cap && !P.free_blocks.empty()) {  // evict the least recently freed
      P.cached -= P.free_blocks.back().first;
      drop.push_back(P.free_blocks.back().second);
      P.free_blocks.pop_back();
    }
  }
  for (void* q : drop) std::free(q);
}
// at::empty for contiguous float32; blocks of >= 4 MiB come from (and return to) the pool.
at::Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t n = (((size_t)numel * sizeof(float)) + 4095) & ~(size_t)4095;
  if (opts.dtype() != at::kFloat || n < kPoolMin || pool_cap() == 0) return at::empty(sizes, opts);
  void* ptr = nullptr;
  {
    BlockPool& P = pool();
    std::lock_guard<std::mutex> g(P.mu);
    for (auto it = P.free_blocks.begin(); it != P.free_blocks.end(); ++it)
      if (it->first == n) {
        ptr = it->second;
        P.cached -= n;
        P.free_blocks.erase(it);
        break;
      }
  }
  if (!ptr && posix_memalign(&ptr, 4096, n) != 0) return at::empty(sizes, opts);
  return at::from_blob(ptr, sizes, [n](void* p) { pool_release(p, n); }, opts.device(at::kCPU));
}
// Python entry: an uninitialised contiguous float32 CPU tensor of this shape (pooled when large).
at::Tensor pool_empty(at::IntArrayRef sizes) { return empty_big(sizes, at::TensorOptions().dtype(at::kFloat)); }
// How many threads one at::parallel_for region of these kernels really runs on (1 when the library
// was built without OpenMP: the region is a plain loop then); tests check it follows torch's setting.
int64_t kernel_threads() {
  std::atomic<int64_t> most{0};
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
    const int64_t t = (int64_t)at::get_thread_num() + 1;
    int64_t cur = most.load();
    while (t > cur && !most.compare_exchange_weak(cur, t)) {
    }
    volatile double sink = 0;  // a little work per chunk, so every thread gets one
    for (int i = 0; i < 20000; ++i) sink = sink + i;
  });
  return most.load();
}
// Frees every cached block; returns the bytes released.
int64_t pool_trim() {
  std::list<std::pair<size_t, void*>> blocks;
  {
    BlockPool& P = pool();
    std::lock_guard<std::mutex> g(P.mu);
    blocks.swap(P.free_blocks);
    P.cached = 0;
  }
  int64_t total = 0;
  for (auto& b : blocks) { total += (int64_t)b.first; std::free(b.second); }
  return total;
}
at::Tensor empty_big_like(const at::Tensor& t) { return empty_big(t.sizes(), t.options()); }

void check(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims");
}

// f(std::integral_constant<int, nv>) for nv in 1..kMaxV (registers of 8 channels in a block)
template <class F>
inline void dispatch_nv(int nv, F&& f) {
  static_assert(kMaxV == 4, "dispatch_nv covers 1..4 registers");
  switch (nv) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// Forward. Returns (y (b,l,e), hT (b,n,e), ckpt (b,nc,n,e) or empty, dts (b,l,e) or empty,
// dsp (b,l,e) or empty): with save_ckpt and a dt prologue, dts is the step the scan used and dsp
// (softplus only) its derivative sigmoid(dt + dt_bias), for scan_bwd_fused.
// Optional fused epilogue / prologue (pass empty tensors to skip; inference path):
//   dt <- softplus(dt + dt_bias) if softplus, else dt + dt_bias;  y <- (y + D u) * silu(z).
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& At,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& h0,
                                 int64_t chunk, bool save_ckpt, const at::Tensor& dt_bias, bool softplus,
                                 const at::Tensor& Dv, const at::Tensor& z) {
  check(u, "u", 3); check(dt, "dt", 3); check(At, "At", 2);
  check(Bm, "B", 3); check(Cm, "C", 3); check(h0, "h0", 3);
  const int64_t Bsz = u.size(0), L = u.size(1), E = u.size(2), N = At.size(0);
  TORCH_CHECK(E % kVec == 0, "channels must be a multiple of 8");
  TORCH_CHECK(At.size(1) == E && Bm.size(2) == N && h0.size(1) == N, "shape mismatch");
  const int64_t nc = save_ckpt ? (L + chunk - 1) / chunk : 0;
  const bool has_bias = dt_bias.numel() > 0, has_D = Dv.numel() > 0, has_z = z.numel() > 0;
  if (has_bias) { check(dt_bias, "dt_bias", 1); TORCH_CHECK(dt_bias.size(0) == E, "dt_bias size"); }
  if (has_D) { check(Dv, "D", 1); TORCH_CHECK(Dv.size(0) == E, "D size"); }
  if (has_z) { check(z, "z", 3); TORCH_CHECK(z.sizes() == u.sizes(), "z shape"); }
  const float* pbias = has_bias ? dt_bias.data_ptr<float>() : nullptr;
  const float* pD = has_D ? Dv.data_ptr<float>() : nullptr;
  const float* pz = has_z ? z.data_ptr<float>() : nullptr;
  auto y = empty_big_like(u);
  auto hT = at::empty_like(h0);
  auto ckpt = empty_big({Bsz, nc, N, E}, u.options());
  // training (save_ckpt) with a prologue: also the step as the scan saw it and d(step)/d(raw dt),
  // so the backward neither re-runs the softplus nor needs the raw dt
  const bool save_dt = save_ckpt && (has_bias || softplus);
  auto dts = save_dt ? empty_big_like(u) : at::empty({0}, u.options());
  auto dsp = save_dt && softplus ? empty_big_like(u) : at::empty({0}, u.options());
  float* pdts = save_dt ? dts.data_ptr<float>() : nullptr;
  float* pdsp = save_dt && softplus ? dsp.data_ptr<float>() : nullptr;
  const int64_t nblk = (E + kBlock - 1) / kBlock;
  const float *pu = u.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = At.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *ph0 = h0.data_ptr<float>();
  float *py = y.data_ptr<float>(), *phT = hT.data_ptr<float>(), *pck = ckpt.data_ptr<float>();

  at::parallel_for(0, Bsz * nblk, 1, [&](int64_t begin, int64_t end) {
    FtzGuard ftz;
    std::vector<__m256> h(N * kMaxV), A(N * kMaxV);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, e0 = (task % nblk) * kBlock;
      const int nv_rt = (int)(std::min<int64_t>(kBlock, E - e0) / kVec);
      auto run = [&](auto nv_c) {  // nv a compile-time constant (see scan_bwd_impl)
      constexpr int nv = decltype(nv_c)::value;
      for (int64_t n = 0; n < N; ++n)
        for (int v = 0; v < nv; ++v) {
          h[n * kMaxV + v] = _mm256_loadu_ps(ph0 + (b * N + n) * E + e0 + v * kVec);
          A[n * kMaxV + v] = _mm256_mul_ps(_mm256_loadu_ps(pA + n * E + e0 + v * kVec), _mm256_set1_ps(kLog2e));
        }
      for (int64_t t = 0; t < L; ++t) {
        if (t + kAhead < L) {
          const int64_t pf = (b * L + t + kAhead) * E + e0;
          prefetch_row<nv>(pdt + pf); prefetch_row<nv>(pu + pf); prefetch_row<nv>(py + pf, true);
          if (save_dt) prefetch_row<nv>(pdts + pf, true);
          if (pdsp) prefetch_row<nv>(pdsp + pf, true);
          if (has_z) prefetch_row<nv>(pz + pf);
        }
        if (save_ckpt && t % chunk == 0) {
          float* ck = pck + ((b * nc + t / chunk) * N) * E + e0;
          for (int64_t n = 0; n < N; ++n)
            for (int v = 0; v < nv; ++v) _mm256_storeu_ps(ck + n * E + v * kVec, h[n * kMaxV + v]);
        }
        const int64_t off = (b * L + t) * E + e0;
        __m256 dtv[kMaxV], duv[kMaxV], yv[kMaxV];
        for (int v = 0; v < nv; ++v) {
          dtv[v] = _mm256_loadu_ps(pdt + off + v * kVec);
          if (has_bias) dtv[v] = _mm256_add_ps(dtv[v], _mm256_loadu_ps(pbias + e0 + v * kVec));
          if (softplus && save_dt) {  // softplus and its derivative sigmoid, sharing exp(-|x|)
            const __m256 one = _mm256_set1_ps(1.0f), x = dtv[v];
            const __m256 ex = exp256(_mm256_min_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), x)));
            const __m256 onep = _mm256_add_ps(one, ex);
            const __m256 num = _mm256_blendv_ps(ex, one, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
            _mm256_storeu_ps(pdsp + off + v * kVec, _mm256_div_ps(num, onep));
            dtv[v] = _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), log256(onep));
          } else if (softplus) {
            dtv[v] = softplus256(dtv[v]);
          }
          if (save_dt) _mm256_storeu_ps(pdts + off + v * kVec, dtv[v]);
          duv[v] = _mm256_mul_ps(dtv[v], _mm256_loadu_ps(pu + off + v * kVec));
          yv[v] = _mm256_setzero_ps();
        }
        const float* Bt = pB + (b * L + t) * N;
        const float* Ct = pC + (b * L + t) * N;
        for (int64_t n = 0; n < N; ++n) {
          const __m256 bn = _mm256_set1_ps(Bt[n]), cn = _mm256_set1_ps(Ct[n]);
          for (int v = 0; v < nv; ++v) {
            __m256 a = exp2_256(_mm256_mul_ps(dtv[v], A[n * kMaxV + v]));
            __m256 hv = _mm256_fmadd_ps(a, h[n * kMaxV + v], _mm256_mul_ps(duv[v], bn));
            h[n * kMaxV + v] = hv;
            yv[v] = _mm256_fmadd_ps(hv, cn, yv[v]);
          }
        }
        for (int v = 0; v < nv; ++v) {
          if (has_D)
            yv[v] = _mm256_fmadd_ps(_mm256_loadu_ps(pD + e0 + v * kVec), _mm256_loadu_ps(pu + off + v * kVec), yv[v]);
          if (has_z) yv[v] = _mm256_mul_ps(yv[v], silu256(_mm256_loadu_ps(pz + off + v * kVec)));
          _mm256_storeu_ps(py + off + v * kVec, yv[v]);
        }
      }
      for (int64_t n = 0; n < N; ++n)
        for (int v = 0; v < nv; ++v) _mm256_storeu_ps(phT + (b * N + n) * E + e0 + v * kVec, h[n * kMaxV + v]);
      };
      dispatch_nv(nv_rt, run);
    }
  });
  return {y, hT, ckpt, dts, dsp};
}

// (hsum(v[0]), ..., hsum(v[7])) in one register: a transpose-and-add tree.
static inline __m256 hsum8x256(const __m256* v) {
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  // s0123 = (v0 lo, v1 lo, v2 lo, v3 lo | v0 hi, v1 hi, v2 hi, v3 hi), same for s4567
  const __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20), hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
  return _mm256_add_ps(lo, hi);
}

static inline __m256 sigmoid256(__m256 x) {
  return _mm256_div_ps(_mm256_set1_ps(1.0f),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// Backward by chunked recompute from the checkpoints. The recompute pass keeps the decays of
// the chunk beside its states (one exp2 per (t, n, channel) in the whole backward, not two).
// With the optional prologue / epilogue of scan_fwd (dt_bias, softplus, D, z: pass empty tensors
// to skip) ``dy`` is the gradient of the gated output and ``dt`` the raw step; the kernel then
// also returns the gradients of D, z and dt_bias, and ddt is the gradient of the raw dt.
// Returns (du (b,l,e), ddt (b,l,e), dAt (b,n,e), dB_part (b,nblk,l,n), dC_part (b,nblk,l,n),
//          dh0 (b,n,e), dD_part (b,e), dz (b,l,e) or empty, dbias_part (b,e)).
// dts / dsp: scan_fwd's saved step and derivative (empty: recomputed from dt, bias, softplus).
std::vector<at::Tensor> scan_bwd_impl(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& At,
                                      const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& ckpt,
                                      const at::Tensor& dy, const at::Tensor& dhT, int64_t chunk,
                                      const at::Tensor& dt_bias, bool softplus, const at::Tensor& Dv,
                                      const at::Tensor& z, const at::Tensor& dts_in, const at::Tensor& dsp_in) {
  check(u, "u", 3); check(dt, "dt", 3); check(At, "At", 2); check(Bm, "B", 3); check(Cm, "C", 3);
  check(ckpt, "ckpt", 4); check(dy, "dy", 3); check(dhT, "dhT", 3);
  const int64_t Bsz = u.size(0), L = u.size(1), E = u.size(2), N = At.size(0);
  TORCH_CHECK(E % kVec == 0, "channels must be a multiple of 8");
  const int64_t nc = ckpt.size(1);
  TORCH_CHECK(nc == (L + chunk - 1) / chunk, "checkpoints do not match the chunk size");
  const int64_t nblk = (E + kBlock - 1) / kBlock;
  const bool has_bias = dt_bias.numel() > 0, has_D = Dv.numel() > 0, has_z = z.numel() > 0;
  if (has_bias) { check(dt_bias, "dt_bias", 1); TORCH_CHECK(dt_bias.size(0) == E, "dt_bias size"); }
  if (has_D) { check(Dv, "D", 1); TORCH_CHECK(Dv.size(0) == E, "D size"); }
  if (has_z) { check(z, "z", 3); TORCH_CHECK(z.sizes() == u.sizes(), "z shape"); }
  const float* pbias = has_bias ? dt_bias.data_ptr<float>() : nullptr;
  const float* pD = has_D ? Dv.data_ptr<float>() : nullptr;
  const float* pz = has_z ? z.data_ptr<float>() : nullptr;
  // the forward's saved step (and its derivative when softplus): then dt itself is not read
  const bool has_dts = dts_in.numel() > 0;
  if (has_dts) {
    check(dts_in, "dts", 3); TORCH_CHECK(dts_in.sizes() == u.sizes(), "dts shape");
    if (softplus) { check(dsp_in, "dsp", 3); TORCH_CHECK(dsp_in.sizes() == u.sizes(), "dsp shape"); }
  }
  const float* pdts = has_dts ? dts_in.data_ptr<float>() : nullptr;
  const float* pdsp = has_dts && softplus ? dsp_in.data_ptr<float>() : nullptr;
  auto du = empty_big_like(u), ddt = empty_big_like(u);
  auto dAt = at::zeros({Bsz, N, E}, u.options());
  auto dBp = empty_big({Bsz, nblk, L, N}, u.options()), dCp = empty_big({Bsz, nblk, L, N}, u.options());
  auto dh0 = at::empty({Bsz, N, E}, u.options());
  auto dDp = at::zeros({Bsz, E}, u.options()), dbp = at::zeros({Bsz, E}, u.options());
  auto dz = has_z ? empty_big_like(u) : at::empty({0}, u.options());
  const float *pu = u.data_ptr<float>(), *pdt = dt.data_ptr<float>(), *pA = At.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  const float *pdy = dy.data_ptr<float>(), *pdhT = dhT.data_ptr<float>();
  float *pdu = du.data_ptr<float>(), *pddt = ddt.data_ptr<float>(), *pdA = dAt.data_ptr<float>();
  float *pdB = dBp.data_ptr<float>(), *pdC = dCp.data_ptr<float>(), *pdh0 = dh0.data_ptr<float>();
  float *pdD = dDp.data_ptr<float>(), *pdb = dbp.data_ptr<float>();
  float* pdz = has_z ? dz.data_ptr<float>() : nullptr;

  // dt as the scan sees it (bias + softplus applied) and d(dt)/d(raw dt), for one register
  auto step_dt = [&](int64_t off, int64_t e, __m256* dsp) {
    if (has_dts) {
      if (dsp) *dsp = softplus ? _mm256_loadu_ps(pdsp + off) : _mm256_set1_ps(1.0f);
      return _mm256_loadu_ps(pdts + off);
    }
    __m256 x = _mm256_loadu_ps(pdt + off);
    if (has_bias) x = _mm256_add_ps(x, _mm256_loadu_ps(pbias + e));
    if (!softplus) { if (dsp) *dsp = _mm256_set1_ps(1.0f); return x; }
    // softplus(x) = max(x, 0) + log(1 + e), sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|)
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 ex = exp256(_mm256_min_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), x)));
    const __m256 onep = _mm256_add_ps(one, ex);
    if (dsp) {
      const __m256 num = _mm256_blendv_ps(ex, one, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
      *dsp = _mm256_div_ps(num, onep);
    }
    return _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), log256(onep));
  };

  at::parallel_for(0, Bsz * nblk, 1, [&](int64_t begin, int64_t end) {
    FtzGuard ftz;
    std::vector<__m256> A(N * kMaxV), A2(N * kMaxV), dh(N * kMaxV), dA(N * kMaxV);
    std::vector<__m256> hs((chunk + 1) * N * kMaxV);  // hs[i] = state before local step i
    std::vector<__m256> as(chunk * N * kMaxV);        // as[i] = decay of local step i
    std::vector<__m256> dts(chunk * kMaxV * 2);       // dt and d(dt)/d(raw dt) of local step i
    std::vector<__m256> sBC(2 * N);                   // per-n partial sums of dB, dC (one step)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, blk = task % nblk, e0 = blk * kBlock;
      const int nv_rt = (int)(std::min<int64_t>(kBlock, E - e0) / kVec);
      // the channel-register count as a compile-time constant: the per-register loops unroll
      // and their accumulators stay in registers instead of stack arrays
      auto run = [&](auto nv_c) {
      constexpr int nv = decltype(nv_c)::value;
      __m256 dDv[kMaxV], dbv[kMaxV], Dr[kMaxV];
      for (int v = 0; v < nv; ++v) {
        dDv[v] = _mm256_setzero_ps();
        dbv[v] = _mm256_setzero_ps();
        Dr[v] = has_D ? _mm256_loadu_ps(pD + e0 + v * kVec) : _mm256_setzero_ps();
      }
      for (int64_t n = 0; n < N; ++n)
        for (int v = 0; v < nv; ++v) {
          A[n * kMaxV + v] = _mm256_loadu_ps(pA + n * E + e0 + v * kVec);
          A2[n * kMaxV + v] = _mm256_mul_ps(A[n * kMaxV + v], _mm256_set1_ps(kLog2e));
          dh[n * kMaxV + v] = _mm256_loadu_ps(pdhT + (b * N + n) * E + e0 + v * kVec);
          dA[n * kMaxV + v] = _mm256_setzero_ps();
        }
      for (int64_t c = nc - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk, t1 = std::min(L, t0 + chunk);
        // recompute the states (and decays) of this chunk
        const float* ck = pck + ((b * nc + c) * N) * E + e0;
        for (int64_t n = 0; n < N; ++n)
          for (int v = 0; v < nv; ++v) hs[n * kMaxV + v] = _mm256_loadu_ps(ck + n * E + v * kVec);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t off = (b * L + t) * E + e0;
          if (t + kAhead < t1) {
            if (has_dts) {
              prefetch_row<nv>(pdts + off + kAhead * E); if (pdsp) prefetch_row<nv>(pdsp + off + kAhead * E);
            } else {
              prefetch_row<nv>(pdt + off + kAhead * E);
            }
            prefetch_row<nv>(pu + off + kAhead * E);
          } else {  // the chunk's last rows are the reverse sweep's first: fetch their dy and z
            prefetch_row<nv>(pdy + off); if (has_z) prefetch_row<nv>(pz + off);
          }
          const float* Bt = pB + (b * L + t) * N;
          __m256* hp = hs.data() + (t - t0) * N * kMaxV;
          __m256* hn = hp + N * kMaxV;
          __m256* ap = as.data() + (t - t0) * N * kMaxV;
          __m256* dp = dts.data() + (t - t0) * kMaxV * 2;
          __m256 dtv[kMaxV], duv[kMaxV];
          for (int v = 0; v < nv; ++v) {
            dtv[v] = step_dt(off + v * kVec, e0 + v * kVec, dp + kMaxV + v);
            dp[v] = dtv[v];
            duv[v] = _mm256_mul_ps(dtv[v], _mm256_loadu_ps(pu + off + v * kVec));
          }
          for (int64_t n = 0; n < N; ++n) {
            const __m256 bn = _mm256_set1_ps(Bt[n]);
            for (int v = 0; v < nv; ++v) {
              __m256 a = exp2_256(_mm256_mul_ps(dtv[v], A2[n * kMaxV + v]));
              ap[n * kMaxV + v] = a;
              hn[n * kMaxV + v] = _mm256_fmadd_ps(a, hp[n * kMaxV + v], _mm256_mul_ps(duv[v], bn));
            }
          }
        }
        // reverse sweep
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t off = (b * L + t) * E + e0;
          if (t - kAhead >= t0) {
            const int64_t pf = off - kAhead * E;
            prefetch_row<nv>(pdy + pf); if (has_z) prefetch_row<nv>(pz + pf);
            prefetch_row<nv>(pdu + pf, true); prefetch_row<nv>(pddt + pf, true);
            if (has_z) prefetch_row<nv>(pdz + pf, true);
          } else if (c > 0) {  // the first rows of the previous chunk's recompute (dt, u from t0 - chunk)
            const int64_t pf = (b * L + t0 - chunk + (t0 + kAhead - 1 - t)) * E + e0;
            if (has_dts) { prefetch_row<nv>(pdts + pf); if (pdsp) prefetch_row<nv>(pdsp + pf); }
            else prefetch_row<nv>(pdt + pf);
            prefetch_row<nv>(pu + pf);
          }
          const float* Bt = pB + (b * L + t) * N;
          const float* Ct = pC + (b * L + t) * N;
          const __m256* hp = hs.data() + (t - t0) * N * kMaxV;
          const __m256* hc = hp + N * kMaxV;
          const __m256* ap = as.data() + (t - t0) * N * kMaxV;
          const __m256* dp = dts.data() + (t - t0) * kMaxV * 2;
          __m256 dtv[kMaxV], dsv[kMaxV], uv[kMaxV], duv[kMaxV], gv[kMaxV], gout[kMaxV], sz[kMaxV], zv[kMaxV];
          __m256 dxu[kMaxV], ddtv[kMaxV], yv[kMaxV];
          for (int v = 0; v < nv; ++v) {
            dtv[v] = dp[v];
            dsv[v] = dp[kMaxV + v];
            uv[v] = _mm256_loadu_ps(pu + off + v * kVec);
            duv[v] = _mm256_mul_ps(dtv[v], uv[v]);
            gout[v] = _mm256_loadu_ps(pdy + off + v * kVec);
            if (has_z) {  // out = y * silu(z): dL/dy = dL/dout * silu(z)
              zv[v] = _mm256_loadu_ps(pz + off + v * kVec);
              sz[v] = sigmoid256(zv[v]);
              gv[v] = _mm256_mul_ps(gout[v], _mm256_mul_ps(zv[v], sz[v]));
            } else {
              gv[v] = gout[v];
            }
            dxu[v] = _mm256_setzero_ps();
            ddtv[v] = _mm256_setzero_ps();
            yv[v] = _mm256_setzero_ps();
          }
          float* dBrow = pdB + ((b * nblk + blk) * L + t) * N;
          float* dCrow = pdC + ((b * nblk + blk) * L + t) * N;
          // The (n, channel-register) loop runs over groups of at most two registers: with all
          // four at once the 6 per-register accumulators / inputs (24 ymm) spill out of the 16
          // AVX2 registers in the innermost loop. The per-n dB / dC partial sums carry across
          // the groups in sBC (L1).
          auto group = [&](auto g_c, int v0, bool first) {
            constexpr int G = decltype(g_c)::value;
            // local copies of the pointers: __m256 stores may alias anything (may_alias), so
            // pointers reached through the closure would be reloaded after every store
            const __m256 *const Hp = hp, *const Hc = hc, *const Ap = ap, *const Av = A.data();
            __m256 *const Dh = dh.data(), *const DA = dA.data(), *const S = sBC.data();
            const float *const Bp = Bt, *const Cp = Ct;
            const int64_t NN = N;
            __m256 g_[G], du_[G], dt_[G], xu_[G], dd_[G], y_[G];
            for (int j = 0; j < G; ++j) {
              g_[j] = gv[v0 + j]; du_[j] = duv[v0 + j]; dt_[j] = dtv[v0 + j];
              xu_[j] = _mm256_setzero_ps(); dd_[j] = _mm256_setzero_ps(); y_[j] = _mm256_setzero_ps();
            }
            for (int64_t n = 0; n < NN; ++n) {
              const __m256 bn = _mm256_broadcast_ss(Bp + n), cn = _mm256_broadcast_ss(Cp + n);
              __m256 sB = first ? _mm256_setzero_ps() : S[n], sC = first ? _mm256_setzero_ps() : S[NN + n];
              for (int j = 0; j < G; ++j) {
                const int64_t i = n * kMaxV + v0 + j;
                const __m256 d = _mm256_fmadd_ps(g_[j], cn, Dh[i]);  // dL/dh_t
                sC = _mm256_fmadd_ps(g_[j], Hc[i], sC);
                y_[j] = _mm256_fmadd_ps(Hc[i], cn, y_[j]);  // y_t, for dL/dz (no branch in the loop)
                sB = _mm256_fmadd_ps(d, du_[j], sB);
                xu_[j] = _mm256_fmadd_ps(d, bn, xu_[j]);
                const __m256 ad = _mm256_mul_ps(Ap[i], d);    // dL/dh_{t-1} through the decay
                const __m256 daa = _mm256_mul_ps(ad, Hp[i]);  // dL/d(dt A) for this n
                dd_[j] = _mm256_fmadd_ps(daa, Av[i], dd_[j]);
                DA[i] = _mm256_fmadd_ps(daa, dt_[j], DA[i]);
                Dh[i] = ad;
              }
              S[n] = sB;
              S[NN + n] = sC;
            }
            for (int j = 0; j < G; ++j) { dxu[v0 + j] = xu_[j]; ddtv[v0 + j] = dd_[j]; yv[v0 + j] = y_[j]; }
          };
          for (int v0 = 0; v0 < nv; v0 += 2) {
            if (v0 + 2 <= nv) group(std::integral_constant<int, 2>{}, v0, v0 == 0);
            else group(std::integral_constant<int, 1>{}, v0, v0 == 0);
          }
          int64_t n8 = 0;
          for (; n8 + kVec <= N; n8 += kVec) {  // 8 horizontal sums at once
            _mm256_storeu_ps(dBrow + n8, hsum8x256(sBC.data() + n8));
            _mm256_storeu_ps(dCrow + n8, hsum8x256(sBC.data() + N + n8));
          }
          for (; n8 < N; ++n8) {
            dBrow[n8] = hsum256(sBC[n8]);
            dCrow[n8] = hsum256(sBC[N + n8]);
          }
          for (int v = 0; v < nv; ++v) {
            __m256 duo = _mm256_mul_ps(dxu[v], dtv[v]);
            if (has_D) {
              duo = _mm256_fmadd_ps(gv[v], Dr[v], duo);
              dDv[v] = _mm256_fmadd_ps(gv[v], uv[v], dDv[v]);
            }
            _mm256_storeu_ps(pdu + off + v * kVec, duo);
            __m256 g = _mm256_mul_ps(_mm256_fmadd_ps(dxu[v], uv[v], ddtv[v]), dsv[v]);  // dL/d(raw dt)
            dbv[v] = _mm256_add_ps(dbv[v], g);
            _mm256_storeu_ps(pddt + off + v * kVec, g);
            if (has_z) {  // dL/dz = dL/dout * (y + D u) * sig(z) (1 + z (1 - sig(z)))
              const __m256 one = _mm256_set1_ps(1.0f);
              __m256 yp = has_D ? _mm256_fmadd_ps(Dr[v], uv[v], yv[v]) : yv[v];
              __m256 ds = _mm256_mul_ps(sz[v], _mm256_fmadd_ps(zv[v], _mm256_sub_ps(one, sz[v]), one));
              _mm256_storeu_ps(pdz + off + v * kVec, _mm256_mul_ps(_mm256_mul_ps(gout[v], yp), ds));
            }
          }
        }
      }
      for (int v = 0; v < nv; ++v) {
        _mm256_storeu_ps(pdD + b * E + e0 + v * kVec, dDv[v]);
        _mm256_storeu_ps(pdb + b * E + e0 + v * kVec, dbv[v]);
      }
      for (int64_t n = 0; n < N; ++n)
        for (int v = 0; v < nv; ++v) {
          _mm256_storeu_ps(pdh0 + (b * N + n) * E + e0 + v * kVec, dh[n * kMaxV + v]);
          _mm256_storeu_ps(pdA + (b * N + n) * E + e0 + v * kVec, dA[n * kMaxV + v]);
        }
      };
      dispatch_nv(nv_rt, run);
    }
  });
  return {du, ddt, dAt, dBp, dCp, dh0, dDp, dz, dbp};
}

// The bare recurrence's backward. Returns (du, ddt, dAt, dB_part, dC_part, dh0) as above.
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& At,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& ckpt,
                                 const at::Tensor& dy, const at::Tensor& dhT, int64_t chunk) {
  auto none = at::empty({0}, u.options());
  auto r = scan_bwd_impl(u, dt, At, Bm, Cm, ckpt, dy, dhT, chunk, none, false, none, none, none, none);
  r.resize(6);
  return r;
}

// Causal depthwise conv1d (+ optional SiLU), time-major: x (b,l,e), w (e,k), bias (e),
// cache (b,k-1,e) = the k-1 inputs before x. Returns y (b,l,e).
static std::vector<at::Tensor> conv_fwd_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                             const at::Tensor& cache, bool silu, bool keep_pre) {
  check(x, "x", 3); check(w, "weight", 2); check(bias, "bias", 1); check(cache, "cache", 3);
  const int64_t Bsz = x.size(0), L = x.size(1), E = x.size(2), K = w.size(1);
  TORCH_CHECK(E % kVec == 0 && K <= 8, "conv kernel needs channels % 8 == 0 and width <= 8");
  auto wt = w.t().contiguous();  // (k, e)
  auto y = empty_big_like(x);
  auto pre = keep_pre ? empty_big_like(x) : at::empty({0}, x.options());
  float* ppre = keep_pre ? pre.data_ptr<float>() : nullptr;
  const float *px = x.data_ptr<float>(), *pw = wt.data_ptr<float>(), *pb = bias.data_ptr<float>();
  const float* pc = cache.data_ptr<float>();
  float* py = y.data_ptr<float>();
  const int64_t nblk = E / kVec, tb = 256;
  const int64_t ntb = (L + tb - 1) / tb;
  at::parallel_for(0, Bsz * ntb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / ntb, ts = (task % ntb) * tb, te = std::min(L, ts + tb);
      for (int64_t t = ts; t < te; ++t) {
        const float* src[8];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t - (K - 1) + k;  // input time of tap k
          src[k] = s >= 0 ? px + (b * L + s) * E : pc + (b * (K - 1) + (K - 1) + s) * E;
        }
        float* dst = py + (b * L + t) * E;
        for (int64_t j = 0; j < nblk; ++j) {
          const int64_t e = j * kVec;
          __m256 acc = _mm256_loadu_ps(pb + e);
          for (int64_t k = 0; k < K; ++k)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(pw + k * E + e), _mm256_loadu_ps(src[k] + e), acc);
          if (keep_pre) _mm256_storeu_ps(ppre + (b * L + t) * E + e, acc);
          if (silu) acc = silu256(acc);
          _mm256_storeu_ps(dst + e, acc);
        }
      }
    }
  });
  return {y, pre};
}

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& cache,
                    bool silu) {
  return conv_fwd_impl(x, w, bias, cache, silu, false)[0];
}

// Training forward: (y = act(pre), pre), both (b,l,e), in one pass (pre is saved for conv_bwd).
std::vector<at::Tensor> conv_fwd_train(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                       const at::Tensor& cache, bool silu) {
  return conv_fwd_impl(x, w, bias, cache, silu, true);
}

// Backward of conv_fwd's pre-activation (with the SiLU when ``silu``): x (b,l,e), w (e,k),
// cache (b,k-1,e), pre (b,l,e) the saved pre-activation, g (b,l,e) the output gradient.
// Returns (gx (b,l,e), gw (e,k), gb (e), gcache (b,k-1,e)). Per time block, gp = dL/dpre is
// formed in a block-local buffer, then: gx[s] = sum_j w[j] gp[s+k-1-j], gw[j] += gp[t] xp[t+j], gb += gp[t], with
// per-task partial sums of gw / gb (summed at the end, so the result does not depend on threads).
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cache,
                                 const at::Tensor& pre, const at::Tensor& g, bool silu) {
  check(x, "x", 3); check(w, "weight", 2); check(cache, "cache", 3); check(pre, "pre", 3); check(g, "grad", 3);
  const int64_t Bsz = x.size(0), L = x.size(1), E = x.size(2), K = w.size(1);
  TORCH_CHECK(E % kVec == 0 && K <= 8, "conv kernel needs channels % 8 == 0 and width <= 8");
  auto wt = w.t().contiguous();  // (k, e)
  auto gx = empty_big_like(x);
  const int64_t tb = 256, ntb = (L + tb - 1) / tb, nblk = E / kVec;
  auto part = at::zeros({Bsz * ntb, K + 1, E}, x.options());  // rows 0..k-1: gw taps, row k: gb
  const float *px = x.data_ptr<float>(), *pw = wt.data_ptr<float>(), *pc = cache.data_ptr<float>();
  const float *ppre = pre.data_ptr<float>(), *pg = g.data_ptr<float>();
  float *pgx = gx.data_ptr<float>(), *ppart = part.data_ptr<float>();
  at::parallel_for(0, Bsz * ntb, 1, [&](int64_t begin, int64_t end) {
    // gp = dL/dpre = g * sig(pre) (1 + pre (1 - sig(pre))) for the rows of one time block and the
    // k-1 after it, in a block-local buffer (no (b, l, e) temporary)
    std::vector<float> gbuf(silu ? (tb + K - 1) * E : 0);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / ntb, ts = (task % ntb) * tb, te = std::min(L, ts + tb);
      const int64_t tg = std::min(L, te + K - 1);  // gp rows [ts, tg) are used
      if (silu)
        for (int64_t i = 0; i < (tg - ts) * E; i += kVec) {
          const int64_t o = (b * L + ts) * E + i;
          const __m256 p = _mm256_loadu_ps(ppre + o);
          const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), p))));
          const __m256 d = _mm256_mul_ps(sg, _mm256_fmadd_ps(p, _mm256_sub_ps(one, sg), one));
          _mm256_storeu_ps(gbuf.data() + i, _mm256_mul_ps(_mm256_loadu_ps(pg + o), d));
        }
      auto gp_row = [&](int64_t q) { return silu ? gbuf.data() + (q - ts) * E : pg + (b * L + q) * E; };
      float* pp = ppart + task * (K + 1) * E;
      for (int64_t t = ts; t < te; ++t) {
        const float* src[8];  // xp[t + j]
        const float* gsrc[8];  // gp[t + k-1-j], or nullptr past the end
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = t - (K - 1) + j;
          src[j] = s >= 0 ? px + (b * L + s) * E : pc + (b * (K - 1) + (K - 1) + s) * E;
          const int64_t q = t + (K - 1) - j;
          gsrc[j] = q < L ? gp_row(q) : nullptr;
        }
        const float* gt = gp_row(t);
        float* dst = pgx + (b * L + t) * E;
        for (int64_t jb = 0; jb < nblk; ++jb) {
          const int64_t e = jb * kVec;
          const __m256 gv = _mm256_loadu_ps(gt + e);
          __m256 acc = _mm256_setzero_ps();
          for (int64_t j = 0; j < K; ++j) {
            const __m256 wj = _mm256_loadu_ps(pw + j * E + e);
            if (gsrc[j]) acc = _mm256_fmadd_ps(wj, _mm256_loadu_ps(gsrc[j] + e), acc);
            float* gw = pp + j * E + e;
            _mm256_storeu_ps(gw, _mm256_fmadd_ps(gv, _mm256_loadu_ps(src[j] + e), _mm256_loadu_ps(gw)));
          }
          float* gb = pp + K * E + e;
          _mm256_storeu_ps(gb, _mm256_add_ps(gv, _mm256_loadu_ps(gb)));
          _mm256_storeu_ps(dst + e, acc);
        }
      }
    }
  });
  auto sums = part.sum(0);  // (k+1, e)
  auto gw = sums.narrow(0, 0, K).t().contiguous();
  auto gb = sums[K].contiguous();
  // cache[u] = xp[u] feeds pre[t] through tap u - t, for t <= u
  auto gc = at::zeros({Bsz, K - 1, E}, x.options());
  float* pgc = gc.data_ptr<float>();
  for (int64_t b = 0; b < Bsz; ++b)
    for (int64_t u = 0; u < K - 1; ++u)
      for (int64_t t = 0; t <= u && t < L; ++t)
        for (int64_t e = 0; e < E; ++e) {
          const int64_t o = (b * L + t) * E + e;
          float gpv = pg[o];
          if (silu) {
            const float sg = 1.0f / (1.0f + std::exp(-ppre[o]));
            gpv *= sg * (1.0f + ppre[o] * (1.0f - sg));
          }
          pgc[(b * (K - 1) + u) * E + e] += pw[(u - t) * E + e] * gpv;
        }
  return {gx, gw, gb, gc};
}

}  // namespace

at::Tensor longstream_empty_big(at::IntArrayRef sizes) { return pool_empty(sizes); }  // pool.h

TORCH_LIBRARY(longstream_ops, m) {
  m.def("scan_fwd(Tensor u, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor h0, int chunk, bool save_ckpt, "
        "Tensor dt_bias, bool softplus, Tensor D, Tensor z) -> Tensor[]");
  m.def("scan_bwd(Tensor u, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor ckpt, Tensor dy, Tensor dhT, int chunk) -> Tensor[]");
  m.def("scan_bwd_fused(Tensor u, Tensor dt, Tensor At, Tensor B, Tensor C, Tensor ckpt, Tensor dy, Tensor dhT, "
        "int chunk, Tensor dt_bias, bool softplus, Tensor D, Tensor z, Tensor dts, Tensor dsp) -> Tensor[]");
  m.def("conv_bwd(Tensor x, Tensor w, Tensor cache, Tensor pre, Tensor g, bool silu) -> Tensor[]");
  m.def("conv_fwd_train(Tensor x, Tensor w, Tensor bias, Tensor cache, bool silu) -> Tensor[]");
  m.def("conv_fwd(Tensor x, Tensor w, Tensor bias, Tensor cache, bool silu) -> Tensor");
  m.def("pool_empty(int[] size) -> Tensor", &pool_empty);  // no tensor inputs: a catch-all kernel
  m.def("pool_trim() -> int", &pool_trim);
  m.def("kernel_threads() -> int", &kernel_threads);
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) {
  m.impl("scan_fwd", &scan_fwd);
  m.impl("scan_bwd", &scan_bwd);
  m.impl("scan_bwd_fused", &scan_bwd_impl);
  m.impl("conv_bwd", &conv_bwd);
  m.impl("conv_fwd_train", &conv_fwd_train);
  m.impl("conv_fwd", &conv_fwd);
}
