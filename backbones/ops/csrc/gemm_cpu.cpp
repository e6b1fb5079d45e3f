// longstream float32 GEMM into a given output through oneDNN, the library PyTorch itself bundles.
//
// torch.mm / addmm on float32 CPU tensors call MKL's sgemm. On AMD CPUs MKL runs its generic AVX2
// code (measured here, AMD EPYC with AVX-512: 65-100 GFLOP/s at one thread on the shapes of a Mamba
// layer's projections), while oneDNN's matmul uses the CPU's AVX-512 (155-233 GFLOP/s on the same
// shapes, float32 products and sums: no reduced-precision math mode is set). PyTorch routes a float32
// matmul to oneDNN only when a reduced-precision mode is asked for, so this op calls
// at::native::mkldnn_matmul (exported by libtorch_cpu) directly: out = beta * out + a @ b, with out
// preallocated (the pooled buffers of ops/bigbuf.py stay in use).
//
// The symbol is looked up at run time (dlsym) and tried once on a 2 x 2 product, so a PyTorch build
// without it (or without oneDNN), or one that refuses float32 on this CPU, only makes gemm_available()
// false; the Python side then keeps torch.mm. Registered as
// torch.ops.longstream_ops.{gemm_available, gemm_preferred, gemm_into}.
// Axis legend: m rows, k inner, n columns.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/library.h>

#include <dlfcn.h>

namespace {

using MatmulFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

MatmulFn resolve() {
  static const MatmulFn fn = [] {
    if (!at::hasMKLDNN()) return MatmulFn(nullptr);
    void* p = dlsym(RTLD_DEFAULT, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff");
    auto f = reinterpret_cast<MatmulFn>(p);
    if (f == nullptr) return f;
    // Some builds refuse float32 on CPUs without AVX-512 (the check meant for its bf16 path fires:
    // AMD EPYC Zen 3, AVX2 only, torch 2.14.1): try a 2 x 2 product once and keep torch.mm if it throws
    // or is wrong.
    try {
      const auto opts = at::TensorOptions().dtype(at::kFloat);
      at::Tensor a = at::arange(4, opts).view({2, 2}), out = at::zeros({2, 2}, opts);
      f(a, a, out, 0.0f, 1.0f);
      if (!at::allclose(out, at::mm(a, a))) return MatmulFn(nullptr);
    } catch (const std::exception&) {
      return MatmulFn(nullptr);
    }
    return f;
  }();
  return fn;
}

bool gemm_available() { return resolve() != nullptr; }

// available and the CPU is AMD's, where MKL takes its generic AVX2 path (LONGSTREAM_GEMM=auto)
bool gemm_preferred() {
  static const bool amd = __builtin_cpu_is("amd");
  return amd && gemm_available();
}

// out (m, n) = beta * out + a (m, k) @ b (k, n); float32 CPU, out contiguous, a / b any strides
// (a transposed view is read as such). beta 0 ignores out's contents.
at::Tensor& gemm_into(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, double beta) {
  const MatmulFn fn = resolve();
  TORCH_CHECK(fn, "gemm_into: oneDNN matmul is not available in this PyTorch build");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "gemm_into takes 2-d tensors");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              "gemm_into takes float32 tensors");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && out.device().is_cpu(), "gemm_into takes CPU tensors");
  TORCH_CHECK(out.is_contiguous(), "gemm_into: out must be contiguous");
  TORCH_CHECK(a.size(1) == b.size(0) && out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "gemm_into: shapes (", a.size(0), ", ", a.size(1), ") @ (", b.size(0), ", ", b.size(1), ") -> (",
              out.size(0), ", ", out.size(1), ") do not match");
  if (a.size(0) == 0 || b.size(1) == 0) return out;
  if (a.size(1) == 0) {  // empty inner dimension: a @ b is zero
    if (beta == 0.0) out.zero_(); else out.mul_(beta);
    return out;
  }
  fn(a, b, out, float(beta), 1.0f);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longstream_ops, m) {
  m.def("gemm_available() -> bool", &gemm_available);
  m.def("gemm_preferred() -> bool", &gemm_preferred);
  m.def("gemm_into(Tensor a, Tensor b, Tensor(a!) out, float beta) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(longstream_ops, CPU, m) {
  m.impl("gemm_into", &gemm_into);
}
