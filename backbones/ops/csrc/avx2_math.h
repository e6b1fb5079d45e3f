// Vectorised float32 math shared by the CPU kernels (AVX2 + FMA): exp, exp2, log, softplus,
// SiLU, a horizontal sum and a flush-to-zero guard. Header-only; each kernel source includes it
// inside its own anonymous namespace, so every translation unit gets internal-linkage copies.
#pragma once
// Needs <immintrin.h>, included by the kernel source before its anonymous namespace.

// exp(x) (softplus, SiLU): Cephes expf polynomial, relative error ~1e-7; x clamped to [-80, 88].
static inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-80.0f);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  e = _mm256_slli_epi32(e, 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 2^t (the decays, with A pre-scaled by log2(e)): t clamped to [-115, 127] (2^-115 ~ e^-80, so
// underflowing decays never reach denormals), t = k + f with k integer and |f| <= 1/2, 2^f by a
// degree-6 polynomial (relative error ~1e-7), 2^k added to the exponent bits.
static inline __m256 exp2_256(__m256 t) {
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-115.0f)), _mm256_set1_ps(127.0f));
  const __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, k);
  __m256 p = _mm256_set1_ps(1.5345806605182588e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3399932067841291e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618489071726799e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550328642129898e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022646248340607e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931471824645996e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

// log(x) for x > 0 (Cephes logf polynomial).
static inline __m256 log256(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256i emm0 = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
  x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
  x = _mm256_or_ps(x, _mm256_set1_ps(0.5f));
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(emm0, _mm256_set1_epi32(0x7f))), one);
  __m256 mask = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OS);
  __m256 tmp = _mm256_and_ps(x, mask);
  x = _mm256_sub_ps(x, one);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, mask));
  x = _mm256_add_ps(x, tmp);
  __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(7.0376836292E-2f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174E-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  x = _mm256_add_ps(x, y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), x);
}

// softplus(x) = max(x, 0) + log(1 + exp(-|x|))
static inline __m256 softplus256(__m256 x) {
  __m256 negabs = _mm256_min_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), x));
  __m256 l = log256(_mm256_add_ps(_mm256_set1_ps(1.0f), exp256(negabs)));
  return _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), l);
}

static inline __m256 silu256(__m256 x) {
  __m256 sg = _mm256_div_ps(_mm256_set1_ps(1.0f),
                            _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
  return _mm256_mul_ps(x, sg);
}

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

// Flush denormals to zero for the lifetime of a task (restores the caller's mode).
struct FtzGuard {
  unsigned int saved;
  FtzGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FtzGuard() { _mm_setcsr(saved); }
};
