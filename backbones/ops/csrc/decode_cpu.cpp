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
// Also rms_norm_rows (the RMSNorm of one token per row), decode_linear (the bandwidth-bound GEMV
// of a token's projections and LM head, float32 / bf16 / int8 weights, on a caller-participating
// pool: see DecodePool), linear_rows (decode_linear for float32 weights) and s4d_step (one step
// of S4D's complex diagonal recurrence), and lm_step (a whole stack of Mamba blocks for one token,
// every phase on the pool, the SSM step split by channels). Registered as
// torch.ops.longstream_ops.{mamba_step, rms_norm_rows, linear_rows, decode_linear, lm_step, s4d_step}
// (a fragment of the library in scan_cpu.cpp).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <unistd.h>
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

void rms_rows(const float* px, const float* pw, float* py, int64_t Bsz, int64_t Dm, double eps) {
  for (int64_t b = 0; b < Bsz; ++b) {
    const float* xr = px + b * Dm;
    float* yr = py + b * Dm;
    double ss = 0.0;
    for (int64_t i = 0; i < Dm; ++i) ss += double(xr[i]) * xr[i];
    const float s = float(1.0 / std::sqrt(ss / double(Dm) + eps));
    for (int64_t i = 0; i < Dm; ++i) yr[i] = xr[i] * s * pw[i];
  }
}

// RMSNorm of rows: x (b, d) -> x * rsqrt(mean(x^2) + eps) * w, float32 (one call per layer in
// decoding instead of the ~8 ops of the composite).
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps) {
  need(x, "x", 2); need(w, "weight", 1);
  const int64_t Bsz = x.size(0), Dm = x.size(1);
  TORCH_CHECK(w.size(0) == Dm, "rms_norm weight must have ", Dm, " entries");
  auto y = at::empty_like(x);
  rms_rows(x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(), Bsz, Dm, eps);
  return y;
}

// ---------------------------------------------------------------- decode GEMVs and their pool
// A token's projections are matrix-vector products bound by memory bandwidth (the weights are
// read once per token). They run on a small pool in which the calling thread takes part: the
// rows are cut into chunks of ~64 KB that every participant claims from one atomic counter, and
// the caller waits only for chunks a helper has already claimed. A helper that the OS has not
// scheduled (a loaded machine) claims nothing and costs nothing, so more threads never make a
// step wait on a thread that is not running — unlike a fork/join region with a barrier.
// Participants: min(at::get_num_threads(), hardware threads), only for weights >= kParBytes; when
// waiting on helpers has cost more than they saved (a preempted helper holding a chunk), the
// caller runs alone for a while and then tries them again.

constexpr int64_t kParBytes = 1 << 20;   // smaller products stay on the calling thread

// hardware threads, read once: std::thread::hardware_concurrency() reads a sysfs file on each call
// (glibc's get_nprocs); a 24-layer token called it ~100 times, ~0.5 ms of its ~20 ms (measured)
int hw_threads() {
  static const int n = int(std::max(1u, std::thread::hardware_concurrency()));
  return n;
}
constexpr int64_t kChunkBytes = 64 << 10;

class DecodePool {
 public:
  using Fn = void (*)(const void* ctx, int64_t chunk);

  static DecodePool& get() {
    static DecodePool* pool = new DecodePool();  // never destroyed (helpers live with the process)
    return *pool;
  }

  // run fn(ctx, c) for c in [0, total) on up to `threads` participants (the caller included)
  void run(int64_t total, Fn fn, const void* ctx, int threads) {
    // inline: one participant, tiny jobs, a forked child (the helpers live in the parent) or a
    // second caller thread while the pool is busy
    if (threads <= 1 || total <= 1 || total >= (1 << 20) || getpid() != pid_ || !caller_.try_lock()) {
      for (int64_t c = 0; c < total; ++c) fn(ctx, c);
      return;
    }
    std::lock_guard<std::mutex> owner(caller_, std::adopt_lock);
    if (backoff_ > 0) {  // helpers cost more than they saved lately (a loaded machine): go alone
      --backoff_;
      for (int64_t c = 0; c < total; ++c) fn(ctx, c);
      return;
    }
    ensure_helpers(threads - 1);
    active_.store(threads - 1, std::memory_order_relaxed);
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    epoch_ = (epoch_ + 1) & 0xffffff;
    state_.store(pack(epoch_, total, 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(m_);
      cv_.notify_all();
    }
    const auto t0 = std::chrono::steady_clock::now();
    int64_t mine = 0, c;
    while ((c = claim(epoch_)) >= 0) {
      fn(ctx, c);
      ++mine;
    }
    done_.fetch_add(mine, std::memory_order_acq_rel);
    const auto t1 = std::chrono::steady_clock::now();
    for (int spins = 0; done_.load(std::memory_order_acquire) < total; ++spins) {
      if (spins < 4096) _mm_pause(); else std::this_thread::yield();
    }
    // did the helpers pay? saved = their chunks at the caller's pace, lost = the wait for them.
    // A running balance (decayed) below zero parks them for the next 512 jobs (~7 tokens of
    // a 24-layer LM), then they are tried again: more threads never cost much more than one.
    const double own = std::chrono::duration<double>(t1 - t0).count();
    const double wait = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const double saved = mine > 0 ? double(total - mine) * own / double(mine) : 0.0;
    balance_ = 0.9 * balance_ + (saved - wait);
    if (balance_ < -2e-3) {
      backoff_ = 512;
      balance_ = 0.0;
    }
  }

 private:
  static uint64_t pack(uint64_t e, uint64_t total, uint64_t next) { return (e << 40) | (total << 20) | next; }

  // claim the next chunk of epoch e, or -1 when none is left (or the job is another one)
  int64_t claim(uint64_t e) {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t next = s & 0xfffff, total = (s >> 20) & 0xfffff;
      if ((s >> 40) != e || next >= total) return -1;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return int64_t(next);
    }
  }

  void ensure_helpers(int n) {
    n = std::min(n, hw_threads() - 1);
    while (int(helpers_.size()) < n) {
      const int idx = int(helpers_.size());
      helpers_.emplace_back([this, idx] { helper(idx); });
      helpers_.back().detach();
    }
  }

  void helper(int idx) {
    uint64_t seen = 0;  // the last epoch this helper looked at
    for (;;) {
      const uint64_t s = state_.load(std::memory_order_acquire);
      const uint64_t e = s >> 40;
      if (e != seen) {
        seen = e;
        if (idx < active_.load(std::memory_order_relaxed)) {
          int64_t mine = 0, c;
          Fn fn = nullptr;
          const void* ctx = nullptr;
          while ((c = claim(e)) >= 0) {
            if (!fn) { fn = fn_; ctx = ctx_; }  // stable while a claimed chunk is unfinished
            fn(ctx, c);
            ++mine;
          }
          if (mine) done_.fetch_add(mine, std::memory_order_acq_rel);
        }
        continue;
      }
      // nothing new: spin ~100 us (the next projection is usually that close), then sleep
      const auto t0 = std::chrono::steady_clock::now();
      bool fresh = false;
      for (int i = 0; !fresh; ++i) {
        _mm_pause();
        fresh = (state_.load(std::memory_order_acquire) >> 40) != seen;
        if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(100)) break;
      }
      if (fresh) continue;
      std::unique_lock<std::mutex> lk(m_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      cv_.wait(lk, [&] { return (state_.load(std::memory_order_seq_cst) >> 40) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  std::mutex caller_, m_;
  std::condition_variable cv_;
  std::vector<std::thread> helpers_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0}, active_{0};
  Fn fn_ = nullptr;
  const void* ctx_ = nullptr;
  uint64_t epoch_ = 0;
  double balance_ = 0.0;  // decayed sum of (time saved - time waited) over recent jobs, seconds
  int backoff_ = 0;       // jobs left to run on the caller alone
  const pid_t pid_ = getpid();
};

int participants(int64_t weight_bytes) {
  if (weight_bytes < kParBytes) return 1;
  const int hw = hw_threads();
  return std::max(1, std::min({at::get_num_threads(), hw, int(weight_bytes / kParBytes)}));
}

// weights: float32, bfloat16 (raw 16-bit) or int8 with one float32 scale per output row

static inline __m256 load_w8(const float* w) { return _mm256_loadu_ps(w); }
static inline __m256 load_w8(const uint16_t* w) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
static inline __m256 load_w8(const int8_t* w) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

struct GemvCtx {
  const float* x;      // (b, i)
  const void* w;       // (o, i)
  const float* scale;  // (o,) or null
  const float* bias;   // (o,) or null
  float* y;            // (b, o)
  int64_t B, I, O, rows;  // rows per chunk (a multiple of 4)
  const uint16_t* xb = nullptr;  // x rounded to bfloat16 (b, i) for the AVX512-BF16 dot products
};

// rows [o0, o1) of y = x W^T (* scale) + bias; four rows share each load of x
template <typename T>
void gemv_chunk(const void* vctx, int64_t chunk) {
  const GemvCtx& g = *static_cast<const GemvCtx*>(vctx);
  const T* W = static_cast<const T*>(g.w);
  const int64_t o0 = chunk * g.rows, o1 = std::min(g.O, o0 + g.rows), I = g.I;
  for (int64_t b = 0; b < g.B; ++b) {
    const float* xr = g.x + b * I;
    float* yr = g.y + b * g.O;
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      const T *w0 = W + o * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      // Software prefetch (AVX2 machines, measured on a Zen 3 with 1 thread, 154 MB head): float32
      // rows stream fastest with none at all (the hardware prefetcher follows four 3 KB rows;
      // prefetching 1 KB ahead in each row cost ~20%); bfloat16 / int8 rows are 2-4x shorter in
      // bytes and run ~2x faster when the next block's bytes are requested in address order.
      int64_t i = 0;
      for (; i + 2 * kV <= I; i += 2 * kV) {
        if constexpr (sizeof(T) < 4) {  // bf16 / int8: prefetch the next block of 4 rows, in address order
          const char* p = reinterpret_cast<const char*>(w3 + I) + i * 4 * int64_t(sizeof(T));
          for (int64_t q = 0; q < 8 * kV * int64_t(sizeof(T)); q += 64) _mm_prefetch(p + q, _MM_HINT_T0);
        }
        const __m256 xv = _mm256_loadu_ps(xr + i), xu = _mm256_loadu_ps(xr + i + kV);
        a0 = _mm256_fmadd_ps(load_w8(w0 + i), xv, a0);
        a1 = _mm256_fmadd_ps(load_w8(w1 + i), xv, a1);
        a2 = _mm256_fmadd_ps(load_w8(w2 + i), xv, a2);
        a3 = _mm256_fmadd_ps(load_w8(w3 + i), xv, a3);
        a0 = _mm256_fmadd_ps(load_w8(w0 + i + kV), xu, a0);
        a1 = _mm256_fmadd_ps(load_w8(w1 + i + kV), xu, a1);
        a2 = _mm256_fmadd_ps(load_w8(w2 + i + kV), xu, a2);
        a3 = _mm256_fmadd_ps(load_w8(w3 + i + kV), xu, a3);
      }
      for (; i < I; i += kV) {
        const __m256 xv = _mm256_loadu_ps(xr + i);
        a0 = _mm256_fmadd_ps(load_w8(w0 + i), xv, a0);
        a1 = _mm256_fmadd_ps(load_w8(w1 + i), xv, a1);
        a2 = _mm256_fmadd_ps(load_w8(w2 + i), xv, a2);
        a3 = _mm256_fmadd_ps(load_w8(w3 + i), xv, a3);
      }
      yr[o] = hsum256(a0); yr[o + 1] = hsum256(a1); yr[o + 2] = hsum256(a2); yr[o + 3] = hsum256(a3);
    }
    for (; o < o1; ++o) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t i = 0; i < I; i += kV) a0 = _mm256_fmadd_ps(load_w8(W + o * I + i), _mm256_loadu_ps(xr + i), a0);
      yr[o] = hsum256(a0);
    }
    for (o = o0; o < o1; ++o) {
      if (g.scale) yr[o] *= g.scale[o];
      if (g.bias) yr[o] += g.bias[o];
    }
  }
}

// The same GEMV in 512-bit registers, for CPUs with AVX-512 (F + BW + VL), chosen at run time: the
// int8 / bf16 widening is compute-bound in 256-bit registers (three instructions per 8 weights), so
// 16 lanes per instruction lift those paths towards the memory-bandwidth limit. Same products,
// x kept in float32; only the order of the float32 sums differs from the AVX2 path.
#define LS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
LS_AVX512 static inline __m512 load_w16(const float* w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }
LS_AVX512 static inline __m512 load_w16(const uint16_t* w, __mmask16 m) {
  const __m256i v = _mm256_maskz_loadu_epi16(m, w);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
LS_AVX512 static inline __m512 load_w16(const int8_t* w, __mmask16 m) {
  const __m128i v = _mm_maskz_loadu_epi8(m, w);
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}
LS_AVX512 static inline __m512 load_w16(const float* w) { return _mm512_loadu_ps(w); }
LS_AVX512 static inline __m512 load_w16(const uint16_t* w) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
LS_AVX512 static inline __m512 load_w16(const int8_t* w) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

template <typename T>
LS_AVX512 void gemv_chunk512(const void* vctx, int64_t chunk) {
  const GemvCtx& g = *static_cast<const GemvCtx*>(vctx);
  const T* W = static_cast<const T*>(g.w);
  const int64_t o0 = chunk * g.rows, o1 = std::min(g.O, o0 + g.rows), I = g.I;
  constexpr int64_t kW = 16, kStep = 2 * kW;          // lanes per register, weights per row per iteration
  constexpr int64_t kLine = 64 / sizeof(T);           // weights per cache line
  constexpr int64_t kAhead = 1024 / sizeof(T);        // software prefetch 1 KB ahead in each row
  const int64_t main_end = I / kStep * kStep;
  const __mmask16 tail_mask = __mmask16((1u << ((I - I / kW * kW))) - 1u);
  for (int64_t b = 0; b < g.B; ++b) {
    const float* xr = g.x + b * I;
    float* yr = g.y + b * g.O;
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      const T *w0 = W + o * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
      for (int64_t i = 0; i < main_end; i += kStep) {
        if (i % kLine == 0) {
          _mm_prefetch(reinterpret_cast<const char*>(w0 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w1 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w2 + i + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w3 + i + kAhead), _MM_HINT_T0);
        }
        if (sizeof(T) == 4) {  // float32: two cache lines per row per iteration
          _mm_prefetch(reinterpret_cast<const char*>(w0 + i + kW + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w1 + i + kW + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w2 + i + kW + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w3 + i + kW + kAhead), _MM_HINT_T0);
        }
        const __m512 xv = _mm512_loadu_ps(xr + i), xu = _mm512_loadu_ps(xr + i + kW);
        a0 = _mm512_fmadd_ps(load_w16(w0 + i), xv, a0);
        a1 = _mm512_fmadd_ps(load_w16(w1 + i), xv, a1);
        a2 = _mm512_fmadd_ps(load_w16(w2 + i), xv, a2);
        a3 = _mm512_fmadd_ps(load_w16(w3 + i), xv, a3);
        b0 = _mm512_fmadd_ps(load_w16(w0 + i + kW), xu, b0);
        b1 = _mm512_fmadd_ps(load_w16(w1 + i + kW), xu, b1);
        b2 = _mm512_fmadd_ps(load_w16(w2 + i + kW), xu, b2);
        b3 = _mm512_fmadd_ps(load_w16(w3 + i + kW), xu, b3);
      }
      for (int64_t i = main_end; i < I; i += kW) {  // at most one full and one partial register
        const __mmask16 m = i + kW <= I ? __mmask16(0xffff) : tail_mask;
        const __m512 xv = _mm512_maskz_loadu_ps(m, xr + i);
        a0 = _mm512_fmadd_ps(load_w16(w0 + i, m), xv, a0);
        a1 = _mm512_fmadd_ps(load_w16(w1 + i, m), xv, a1);
        a2 = _mm512_fmadd_ps(load_w16(w2 + i, m), xv, a2);
        a3 = _mm512_fmadd_ps(load_w16(w3 + i, m), xv, a3);
      }
      yr[o] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
      yr[o + 1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
      yr[o + 2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
      yr[o + 3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
    }
    for (; o < o1; ++o) {
      __m512 a0 = _mm512_setzero_ps();
      for (int64_t i = 0; i < I; i += kW) {
        const __mmask16 m = i + kW <= I ? __mmask16(0xffff) : tail_mask;
        a0 = _mm512_fmadd_ps(load_w16(W + o * I + i, m), _mm512_maskz_loadu_ps(m, xr + i), a0);
      }
      yr[o] = _mm512_reduce_add_ps(a0);
    }
    for (o = o0; o < o1; ++o) {
      if (g.scale) yr[o] *= g.scale[o];
      if (g.bias) yr[o] += g.bias[o];
    }
  }
}

// bfloat16 weights on CPUs with AVX512-BF16: vdpbf16ps multiplies 32 bf16 pairs per instruction into
// 16 float32 sums, so the weights are not widened at all. x is rounded to bf16 once per call (round
// to nearest even, as llama.cpp's bf16 dot does); products and sums stay float32.
#define LS_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
LS_AVX512BF16 static inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

LS_AVX512BF16 void gemv_chunk_bf16dp(const void* vctx, int64_t chunk) {
  const GemvCtx& g = *static_cast<const GemvCtx*>(vctx);
  const uint16_t* W = static_cast<const uint16_t*>(g.w);
  const int64_t o0 = chunk * g.rows, o1 = std::min(g.O, o0 + g.rows), I = g.I;
  constexpr int64_t kP = 32;  // bf16 per register
  constexpr int64_t kAhead = 512;  // prefetch 1 KB ahead in each row
  const int64_t main_end = I / kP * kP;
  const __mmask32 tail = __mmask32((uint64_t(1) << (I - main_end)) - 1);
  for (int64_t b = 0; b < g.B; ++b) {
    const uint16_t* xr = g.xb + b * I;
    float* yr = g.y + b * g.O;
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
      const uint16_t *w0 = W + o * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      for (int64_t i = 0; i < main_end; i += kP) {
        _mm_prefetch(reinterpret_cast<const char*>(w0 + i + kAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w1 + i + kAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w2 + i + kAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w3 + i + kAhead), _MM_HINT_T0);
        const __m512bh xv = as_bh(_mm512_loadu_si512(xr + i));
        a0 = _mm512_dpbf16_ps(a0, as_bh(_mm512_loadu_si512(w0 + i)), xv);
        a1 = _mm512_dpbf16_ps(a1, as_bh(_mm512_loadu_si512(w1 + i)), xv);
        a2 = _mm512_dpbf16_ps(a2, as_bh(_mm512_loadu_si512(w2 + i)), xv);
        a3 = _mm512_dpbf16_ps(a3, as_bh(_mm512_loadu_si512(w3 + i)), xv);
      }
      if (main_end < I) {
        const __m512bh xv = as_bh(_mm512_maskz_loadu_epi16(tail, xr + main_end));
        a0 = _mm512_dpbf16_ps(a0, as_bh(_mm512_maskz_loadu_epi16(tail, w0 + main_end)), xv);
        a1 = _mm512_dpbf16_ps(a1, as_bh(_mm512_maskz_loadu_epi16(tail, w1 + main_end)), xv);
        a2 = _mm512_dpbf16_ps(a2, as_bh(_mm512_maskz_loadu_epi16(tail, w2 + main_end)), xv);
        a3 = _mm512_dpbf16_ps(a3, as_bh(_mm512_maskz_loadu_epi16(tail, w3 + main_end)), xv);
      }
      yr[o] = _mm512_reduce_add_ps(a0);
      yr[o + 1] = _mm512_reduce_add_ps(a1);
      yr[o + 2] = _mm512_reduce_add_ps(a2);
      yr[o + 3] = _mm512_reduce_add_ps(a3);
    }
    for (; o < o1; ++o) {
      __m512 a0 = _mm512_setzero_ps();
      for (int64_t i = 0; i < I; i += kP) {
        const __mmask32 m = i + kP <= I ? __mmask32(0xffffffffu) : tail;
        a0 = _mm512_dpbf16_ps(a0, as_bh(_mm512_maskz_loadu_epi16(m, W + o * I + i)), as_bh(_mm512_maskz_loadu_epi16(m, xr + i)));
      }
      yr[o] = _mm512_reduce_add_ps(a0);
    }
    for (o = o0; o < o1; ++o) {
      if (g.scale) yr[o] *= g.scale[o];
      if (g.bias) yr[o] += g.bias[o];
    }
  }
}

// x (n floats) -> bf16, round to nearest even (n % 16 handled by a masked tail)
LS_AVX512BF16 void to_bf16(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), reinterpret_cast<const __m256i&>(static_cast<const __m256bh&>(_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)))));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, reinterpret_cast<const __m256i&>(v));
  }
}

// Which GEMV the decode ops use: 2 = AVX-512 (the default where the CPU has F + BW + VL + DQ),
// 1 = AVX2. LONGSTREAM_DECODE_ISA=1 forces AVX2; the op decode_isa reads / sets it (tests compare).
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_has_avx512bf16() {
  static const bool has = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return has;
}
int initial_isa() {
  const char* env = std::getenv("LONGSTREAM_DECODE_ISA");
  return (env && std::atoi(env) == 1) || !cpu_has_avx512() ? 1 : 2;
}
std::atomic<int> g_isa{initial_isa()};

// decode_isa(level): 0 reads the choice; 1 selects AVX2; 2 selects AVX-512 when the CPU has it (else
// AVX2). Returns the level in use afterwards.
int64_t decode_isa(int64_t level) {
  if (level == 1 || level == 2) g_isa.store(level == 2 && cpu_has_avx512() ? 2 : 1);
  return g_isa.load();
}

// y (b, o) = x (b, i) W^T (* scale) + bias on the decode pool; W already checked (contiguous, 2-d,
// float32 / bfloat16 / int8, i % 8 == 0).
void run_gemv(const float* x, int64_t Bsz, const at::Tensor& w, const float* scale, const float* bias, float* y) {
  const int64_t I = w.size(1), O = w.size(0), esz = w.element_size();
  const int64_t rows = std::max<int64_t>(4, (kChunkBytes / (I * esz)) / 4 * 4);
  GemvCtx g{x, w.data_ptr(), scale, bias, y, Bsz, I, O, rows};
  const auto st = w.scalar_type();
  DecodePool::Fn fn;
  std::vector<uint16_t> xb;
  const bool wide = g_isa.load(std::memory_order_relaxed) == 2;
  if (wide && st == at::kBFloat16 && cpu_has_avx512bf16()) {
    xb.resize(size_t(Bsz * I));
    to_bf16(x, xb.data(), Bsz * I);
    g.xb = xb.data();
    fn = &gemv_chunk_bf16dp;
  } else if (wide)
    fn = st == at::kFloat ? &gemv_chunk512<float> : st == at::kBFloat16 ? &gemv_chunk512<uint16_t> : &gemv_chunk512<int8_t>;
  else
    fn = st == at::kFloat ? &gemv_chunk<float> : st == at::kBFloat16 ? &gemv_chunk<uint16_t> : &gemv_chunk<int8_t>;
  DecodePool::get().run((O + rows - 1) / rows, fn, &g, participants(O * I * esz * Bsz));
}

// a checked decode weight: W (o, i) float32 / bfloat16 / int8 (int8 with its per-row scale)
struct Lin {
  const float* scale;  // null when absent
  const float* bias;   // null when absent
};

Lin check_lin(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& bias, int64_t I) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous() && w.dim() == 2, "weight must be a contiguous 2-d CPU tensor");
  const int64_t O = w.size(0);
  TORCH_CHECK(w.size(1) == I && I % kV == 0, "decode weight must be (o, i) with i == ", I, " and i % 8 == 0");
  const auto st = w.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kChar,
              "decode weight must be float32, bfloat16 or int8");
  const bool has_s = scale.defined() && scale.numel() > 0, has_b = bias.defined() && bias.numel() > 0;
  TORCH_CHECK(st != at::kChar || has_s, "an int8 weight needs its per-row scale");
  if (has_s) { need(scale, "scale", 1); TORCH_CHECK(scale.size(0) == O, "scale must have ", O, " entries"); }
  if (has_b) { need(bias, "bias", 1); TORCH_CHECK(bias.size(0) == O, "bias must have ", O, " entries"); }
  return {has_s ? scale.data_ptr<float>() : nullptr, has_b ? bias.data_ptr<float>() : nullptr};
}

// y = x W^T (* scale) + bias for a few rows x (b, i) float32; W (o, i) float32 / bfloat16 / int8
// (int8 needs scale (o,)); i % 8 == 0. Threaded on the decode pool for weights >= 1 MB.
at::Tensor decode_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& bias) {
  need(x, "x", 2);
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous() && w.dim() == 2, "weight must be a contiguous 2-d CPU tensor");
  const int64_t Bsz = x.size(0), I = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == I && I % kV == 0, "decode_linear needs weight (o, i) with i == x.size(1) and i % 8 == 0");
  const Lin l = check_lin(w, scale, bias, I);
  auto y = at::empty({Bsz, O}, x.options());
  run_gemv(x.data_ptr<float>(), Bsz, w, l.scale, l.bias, y.data_ptr<float>());
  return y;
}

// y = x W^T + bias, float32 (the small projections of a decode step; threaded like decode_linear
// from 1 MB of weights up).
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  need(w, "weight", 2);
  return decode_linear(x, w, at::Tensor(), bias);
}

// ---------------------------------------------------------------- whole-model decode step
// lm_step: one token through a stack of pre-norm Mamba blocks (h += out_proj(mamba(in_proj(norm(h))))
// per layer, then the final norm) in one call. Every phase runs on the decode pool: the in / out
// projections by rows (run_gemv) and the SSM step by blocks of kStepCh channels in two passes,
//   A: conv + SiLU of the block's channels and their partial x_proj dot products,
//   B: (after the partials are summed in block order on the caller) dt, the state update and y.
// The partials are always summed in the same order, so the result does not depend on the number
// of threads. The arithmetic is mamba_step's (the x_proj sums are split by blocks of channels).

constexpr int64_t kStepCh = 64;  // channels per SSM-step chunk (a multiple of 8)

struct StepCtx {
  const float *xz, *conv, *conv_w, *conv_b, *xproj_t, *dtw, *dt_b, *A, *D, *ssm;
  float *u, *part, *xd, *conv_new, *ssm_new, *y;
  int64_t B, E, K, N, R, J;  // J = R + 2N
};

// acc[0:n] += a * w[0:n]
static inline void axpy_row(float* acc, float a, const float* w, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t j = 0;
  for (; j + kV <= n; j += kV) _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(w + j), _mm256_loadu_ps(acc + j)));
  for (; j < n; ++j) acc[j] += a * w[j];
}

static inline float dot_row(const float* a, const float* b, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + kV <= n; j += kV) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s);
  float r = hsum256(s);
  for (; j < n; ++j) r += a[j] * b[j];
  return r;
}

// Both passes read their weights as one contiguous slab per block of channels: x_proj transposed
// (e, J) rows c0..c1, dt_proj (e, r) rows c0..c1 (column strips of the (J, e) / (r, e) layouts
// are short strided reads that stall on memory latency).
void step_pass_a(const void* vctx, int64_t chunk) {
  const StepCtx& t = *static_cast<const StepCtx*>(vctx);
  const int64_t c0 = chunk * kStepCh, c1 = std::min(t.E, c0 + kStepCh), E = t.E, K = t.K, J = t.J;
  FtzGuard ftz;
  for (int64_t b = 0; b < t.B; ++b) {
    const float* x = t.xz + b * 2 * E;
    float* u = t.u + b * E;
    for (int64_t c = c0; c < c1; ++c) {
      const float* win = t.conv + (b * E + c) * (K - 1);
      float* wn = t.conv_new + (b * E + c) * (K - 1);
      const float* w = t.conv_w + c * K;
      float acc = t.conv_b[c];
      for (int64_t k = 0; k < K - 1; ++k) acc += w[k] * win[k];
      acc += w[K - 1] * x[c];
      for (int64_t k = 0; k + 1 < K - 1; ++k) wn[k] = win[k + 1];
      if (K > 1) wn[K - 2] = x[c];
      u[c] = acc;
    }
    for (int64_t c = c0; c < c1; c += kV) _mm256_storeu_ps(u + c, silu256(_mm256_loadu_ps(u + c)));
    float* part = t.part + (chunk * t.B + b) * J;
    for (int64_t j = 0; j < J; ++j) part[j] = 0.f;
    for (int64_t c = c0; c < c1; ++c) axpy_row(part, u[c], t.xproj_t + c * J, J);
  }
}

void step_pass_b(const void* vctx, int64_t chunk) {
  const StepCtx& t = *static_cast<const StepCtx*>(vctx);
  const int64_t c0 = chunk * kStepCh, c1 = std::min(t.E, c0 + kStepCh), E = t.E, N = t.N;
  FtzGuard ftz;
  float dt[kStepCh];
  for (int64_t b = 0; b < t.B; ++b) {
    const float* xd = t.xd + b * t.J;
    const float *Bv = xd + t.R, *Cv = Bv + N;
    const float* u = t.u + b * E;
    const float* z = t.xz + b * 2 * E + E;
    for (int64_t c = c0; c < c1; ++c) dt[c - c0] = t.dt_b[c] + dot_row(t.dtw + c * t.R, xd, t.R);
    for (int64_t c = c0; c < c1; c += kV) _mm256_storeu_ps(dt + (c - c0), softplus256(_mm256_loadu_ps(dt + (c - c0))));
    for (int64_t c = c0; c < c1; ++c) {
      const float dc = dt[c - c0];
      const __m256 vdt = _mm256_set1_ps(dc), vdu = _mm256_set1_ps(dc * u[c]);
      const float* hr = t.ssm + (b * E + c) * N;
      float* hn = t.ssm_new + (b * E + c) * N;
      const float* ar = t.A + c * N;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < N; i += kV) {
        __m256 h = _mm256_mul_ps(_mm256_loadu_ps(hr + i), exp256(_mm256_mul_ps(vdt, _mm256_loadu_ps(ar + i))));
        h = _mm256_fmadd_ps(vdu, _mm256_loadu_ps(Bv + i), h);
        _mm256_storeu_ps(hn + i, h);
        acc = _mm256_fmadd_ps(h, _mm256_loadu_ps(Cv + i), acc);
      }
      t.y[b * E + c] = hsum256(acc) + t.D[c] * u[c];
    }
    float* yr = t.y + b * E;
    for (int64_t c = c0; c < c1; c += kV)
      _mm256_storeu_ps(yr + c, _mm256_mul_ps(_mm256_loadu_ps(yr + c), silu256(_mm256_loadu_ps(z + c))));
  }
}

constexpr int kLmStepPerLayer = 14;

// h (b, d) embedded token; layers: 14 tensors per layer in this order
//   norm_w (d), in_w (2e, d), in_scale, in_bias, conv_w (e, k), conv_b (e), xproj_t (e, r+2n) (x_proj
//   weight transposed), dtproj_w (e, r), dt_b (e), A (e, n), D (e), out_w (d, e), out_scale, out_bias
// (in_w / out_w float32, bfloat16 or int8; scale / bias empty when absent; int8 needs its scale);
// conv[i] (b, e, k-1), ssm[i] (b, e, n) the states (read only). Returns
// [norm_f(h_out) (b, d), new conv_0 .. conv_{L-1}, new ssm_0 .. ssm_{L-1}].
std::vector<at::Tensor> lm_step(const at::Tensor& h_in, at::TensorList layers, at::TensorList conv,
                                at::TensorList ssm, const at::Tensor& norm_f, double eps) {
  need(h_in, "h", 2); need(norm_f, "norm_f", 1);
  const int64_t L = int64_t(conv.size());
  TORCH_CHECK(int64_t(layers.size()) == kLmStepPerLayer * L && int64_t(ssm.size()) == L,
              "lm_step needs 14 tensors and one conv / ssm state per layer");
  const int64_t Bsz = h_in.size(0), Dm = h_in.size(1);
  TORCH_CHECK(norm_f.size(0) == Dm, "norm_f must have ", Dm, " entries");
  auto h = h_in.clone();
  auto x = at::empty_like(h);
  std::vector<at::Tensor> out(1 + 2 * L);
  at::Tensor xz, u, y, part, xd, o;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* p = layers.data() + kLmStepPerLayer * l;
    const at::Tensor &norm_w = p[0], &in_w = p[1], &conv_w = p[4], &conv_b = p[5], &xproj_t = p[6];
    const at::Tensor &dtw = p[7], &dt_b = p[8], &A = p[9], &D = p[10], &out_w = p[11];
    need(norm_w, "norm weight", 1); need(conv_w, "conv_w", 2); need(conv_b, "conv_b", 1);
    need(xproj_t, "xproj_t", 2); need(dtw, "dtproj_w", 2); need(dt_b, "dt_b", 1); need(A, "A", 2); need(D, "D", 1);
    need(conv[l], "conv state", 3); need(ssm[l], "ssm state", 3);
    const int64_t E = conv_w.size(0), K = conv_w.size(1), N = A.size(1), R = dtw.size(1), J = R + 2 * N;
    TORCH_CHECK(E % kV == 0 && N % kV == 0, "lm_step needs e % 8 == 0 and n % 8 == 0");
    TORCH_CHECK(norm_w.size(0) == Dm && in_w.size(0) == 2 * E && out_w.size(0) == Dm && out_w.size(1) == E,
                "lm_step projection shapes");
    TORCH_CHECK(xproj_t.size(0) == E && xproj_t.size(1) == J && dtw.size(0) == E && A.size(0) == E, "lm_step SSM shapes");
    TORCH_CHECK(conv[l].size(0) == Bsz && conv[l].size(1) == E && conv[l].size(2) == K - 1 && ssm[l].size(0) == Bsz &&
                    ssm[l].size(1) == E && ssm[l].size(2) == N, "lm_step state shapes");
    const Lin lin_in = check_lin(in_w, p[2], p[3], Dm), lin_out = check_lin(out_w, p[12], p[13], E);
    const int64_t nch = (E + kStepCh - 1) / kStepCh;
    if (!xz.defined() || xz.size(1) != 2 * E || part.size(0) != nch * Bsz * J) {
      xz = at::empty({Bsz, 2 * E}, h.options());
      u = at::empty({Bsz, E}, h.options());
      y = at::empty({Bsz, E}, h.options());
      part = at::empty({nch * Bsz * J}, h.options());
      xd = at::empty({Bsz, J}, h.options());
      o = at::empty({Bsz, Dm}, h.options());
    }
    rms_rows(h.data_ptr<float>(), norm_w.data_ptr<float>(), x.data_ptr<float>(), Bsz, Dm, eps);
    run_gemv(x.data_ptr<float>(), Bsz, in_w, lin_in.scale, lin_in.bias, xz.data_ptr<float>());
    auto conv_new = at::empty_like(conv[l]);
    auto ssm_new = at::empty_like(ssm[l]);
    StepCtx t{xz.data_ptr<float>(), conv[l].data_ptr<float>(), conv_w.data_ptr<float>(), conv_b.data_ptr<float>(),
              xproj_t.data_ptr<float>(), dtw.data_ptr<float>(), dt_b.data_ptr<float>(), A.data_ptr<float>(),
              D.data_ptr<float>(), ssm[l].data_ptr<float>(), u.data_ptr<float>(), part.data_ptr<float>(),
              xd.data_ptr<float>(), conv_new.data_ptr<float>(), ssm_new.data_ptr<float>(), y.data_ptr<float>(),
              Bsz, E, K, N, R, J};
    const int threads = participants(in_w.numel() * in_w.element_size() * Bsz);
    DecodePool::get().run(nch, &step_pass_a, &t, threads);
    float* pxd = xd.data_ptr<float>();
    const float* pp = part.data_ptr<float>();
    for (int64_t i = 0; i < Bsz * J; ++i) pxd[i] = 0.f;
    for (int64_t c = 0; c < nch; ++c)  // block order: independent of the thread count
      for (int64_t i = 0; i < Bsz * J; ++i) pxd[i] += pp[c * Bsz * J + i];
    DecodePool::get().run(nch, &step_pass_b, &t, threads);
    run_gemv(y.data_ptr<float>(), Bsz, out_w, lin_out.scale, lin_out.bias, o.data_ptr<float>());
    float* ph = h.data_ptr<float>();
    const float* po = o.data_ptr<float>();
    for (int64_t i = 0; i < Bsz * Dm; ++i) ph[i] += po[i];
    out[1 + l] = conv_new;
    out[1 + L + l] = ssm_new;
  }
  out[0] = at::empty_like(h);
  rms_rows(h.data_ptr<float>(), norm_f.data_ptr<float>(), out[0].data_ptr<float>(), Bsz, Dm, eps);
  return out;
}

// One streaming step of a diagonal complex SSM (S4D, Gu et al. 2022) for rows u (b, h):
//   x = dA x + dB u   (complex, per channel h and mode n),   y = sum_n Re(c2 x) + D u
// with dA, dB (h, n, 2) as (re, im) pairs, c2 (h, n, 2) = [Re 2C, -Im 2C] and the state x
// (b, h, n, 2). With gelu the output is GELU(y) (erf form). Returns {y (b, h), new x}; the
// input state is not modified. Single-threaded (h n is a few thousand multiply-adds).
std::vector<at::Tensor> s4d_step(const at::Tensor& u, const at::Tensor& x, const at::Tensor& dA,
                                 const at::Tensor& dB, const at::Tensor& c2, const at::Tensor& D, bool gelu) {
  need(u, "u", 2); need(x, "state", 4); need(dA, "dA", 3); need(dB, "dB", 3); need(c2, "c2", 3); need(D, "D", 1);
  const int64_t Bsz = u.size(0), H = u.size(1), N = dA.size(1);
  TORCH_CHECK(x.size(0) == Bsz && x.size(1) == H && x.size(2) == N && x.size(3) == 2, "s4d_step state shape");
  TORCH_CHECK(dA.size(0) == H && dB.size(0) == H && c2.size(0) == H && D.size(0) == H, "s4d_step table shapes");
  auto y = at::empty({Bsz, H}, u.options());
  auto xn = at::empty_like(x);
  const float *pu = u.data_ptr<float>(), *px = x.data_ptr<float>(), *pa = dA.data_ptr<float>();
  const float *pb = dB.data_ptr<float>(), *pc = c2.data_ptr<float>(), *pd = D.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pn = xn.data_ptr<float>();
  for (int64_t b = 0; b < Bsz; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const float uv = pu[b * H + h];
      const float* xr = px + (b * H + h) * N * 2;
      float* nr = pn + (b * H + h) * N * 2;
      const float *ar = pa + h * N * 2, *br = pb + h * N * 2, *cr = pc + h * N * 2;
      float acc = 0.f;
      for (int64_t n = 0; n < N; ++n) {
        const float re = ar[2 * n] * xr[2 * n] - ar[2 * n + 1] * xr[2 * n + 1] + br[2 * n] * uv;
        const float im = ar[2 * n] * xr[2 * n + 1] + ar[2 * n + 1] * xr[2 * n] + br[2 * n + 1] * uv;
        nr[2 * n] = re;
        nr[2 * n + 1] = im;
        acc += cr[2 * n] * re + cr[2 * n + 1] * im;
      }
      const float v = acc + pd[h] * uv;
      py[b * H + h] = gelu ? 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f)) : v;
    }
  }
  return {y, xn};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longstream_ops, m) {
  m.def("mamba_step(Tensor xz, Tensor conv, Tensor conv_w, Tensor conv_b, Tensor xproj_w, Tensor dtproj_wt, "
        "Tensor dt_b, Tensor A, Tensor D, Tensor ssm) -> Tensor[]");
  m.def("rms_norm_rows(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("linear_rows(Tensor x, Tensor w, Tensor bias) -> Tensor");
  m.def("decode_linear(Tensor x, Tensor w, Tensor scale, Tensor bias) -> Tensor");
  m.def("lm_step(Tensor h, Tensor[] layers, Tensor[] conv, Tensor[] ssm, Tensor norm_f, float eps) -> Tensor[]");
  m.def("decode_isa(int level) -> int", &decode_isa);
  m.def("s4d_step(Tensor u, Tensor x, Tensor dA, Tensor dB, Tensor c2, Tensor D, bool gelu) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) {
  m.impl("mamba_step", &mamba_step);
  m.impl("rms_norm_rows", &rms_norm_rows);
  m.impl("linear_rows", &linear_rows);
  m.impl("decode_linear", &decode_linear);
  m.impl("lm_step", &lm_step);
  m.impl("s4d_step", &s4d_step);
}
