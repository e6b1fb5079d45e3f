"""Large CPU float32 buffers reused across calls, and a linear layer whose big outputs use them.

A fresh (l, e) float32 activation at long lengths is tens to hundreds of MB. glibc serves a block
above 32 MiB with a fresh ``mmap`` and unmaps it when the tensor dies, so the kernel faults every
page in again (one fault and one zeroed 4 KiB page at a time) on each call. On the virtual machine
this was measured on that is ~2.7 us per page: a Mamba forward at 64K tokens spent ~0.5 s of its
~2 s in page faults, and its training step ~1.8 s. The compiled kernels (``csrc/scan_cpu.cpp``)
therefore keep freed blocks of >= 4 MiB in a pool (exact sizes, most recently freed first) and
hand them to the next tensor of that size; a training loop repeats the same shapes every step,
so after the first step nothing is faulted in. This module gives Python the same buffers for
the outputs of the big GEMMs (:func:`linear`) and other ops with an ``out=``.

The pool holds at most ``LONGSTREAM_POOL_MB`` MiB of freed blocks (default 2048, read at each
call; ``0`` turns it off: plain ``torch.empty``); :func:`trim` frees them. Live tensors do not
count; freed blocks stay mapped until a tensor of their size takes them (as with the CUDA caching
allocator), so blocks freed inside a step and not asked for again before its peak add to the
resident peak (Mamba-2 training step at 64K tokens, d_model 256: 1,677 MiB above the start with
the pool, 1,415 MiB with ``LONGSTREAM_POOL_MB=0``). Without the compiled kernels, :func:`empty`
is ``torch.empty``.

Axis legend: m rows, i input width, o output width.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels

__all__ = ["MIN_BYTES", "empty", "empty_like", "gemm", "gemm_backend", "linear", "split_linear", "trim"]

MIN_BYTES = 4 << 20  # below this, glibc serves the block from its heap (its pages are reused)


def _pooled(dtype: torch.dtype, device: torch.device | str | None, nbytes: int) -> bool:
    return (
        nbytes >= MIN_BYTES
        and dtype == torch.float32
        and (device is None or torch.device(device).type == "cpu")
        and cpu_kernels.has_op("pool_empty")
    )


def empty(*shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Uninitialised contiguous tensor; large float32 CPU ones come from the kernels' block pool."""
    n = 1
    for s in shape:
        n *= int(s)
    if _pooled(dtype, device, n * 4):
        return cpu_kernels.ops().pool_empty([int(s) for s in shape])
    return torch.empty(*shape, dtype=dtype, device=device)


def empty_like(t: Tensor) -> Tensor:
    """Contiguous :func:`empty` with t's shape, dtype and device."""
    return empty(*t.shape, dtype=t.dtype, device=t.device)


def gemm_backend() -> str:
    """The float32 GEMM the pooled paths use: ``"onednn"`` (``torch.ops.longstream_ops.gemm_into``:
    PyTorch's bundled oneDNN matmul, AVX-512 where the CPU has it) or ``"mkl"`` (``torch.mm``).

    ``LONGSTREAM_GEMM`` = ``onednn`` | ``mkl`` | ``auto`` (default, read at each call): ``auto`` takes
    oneDNN on AMD CPUs, where MKL runs its generic AVX2 code (float32 GEMMs of a Mamba layer's
    projections measured 2.3-3x faster through oneDNN at one thread on the AMD EPYC of
    ``benchmarks/results/backbones.md``), and MKL elsewhere. Both compute in float32."""
    mode = os.environ.get("LONGSTREAM_GEMM", "auto").lower()
    if mode == "mkl" or not cpu_kernels.has_op("gemm_available") or not _gemm_ok()[0]:
        return "mkl"
    return "onednn" if mode == "onednn" or _gemm_ok()[1] else "mkl"


@functools.lru_cache(maxsize=1)
def _gemm_ok() -> tuple[bool, bool]:
    """(oneDNN matmul available, and preferred on this CPU: an AMD one), asked once of the kernels."""
    ops = cpu_kernels.ops()
    return bool(ops.gemm_available()), bool(ops.gemm_preferred())


def gemm(a: Tensor, b: Tensor, out: Tensor, beta: float = 0.0) -> Tensor:
    """``out = beta * out + a @ b`` for 2-d float32 CPU tensors (``out`` contiguous; ``a`` / ``b`` may
    be transposed views), through :func:`gemm_backend`'s library; ``beta`` 0 or 1."""
    if (
        a.dtype == b.dtype == out.dtype == torch.float32
        and a.device.type == "cpu"
        and out.is_contiguous()
        and gemm_backend() == "onednn"
    ):
        return cpu_kernels.ops().gemm_into(a, b, out, float(beta))
    if beta == 0.0:
        return torch.mm(a, b, out=out)
    return out.addmm_(a, b, beta=beta)


def _mm_bias(x2: Tensor, wt: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """out = x2 @ wt (+ bias): the forward GEMM of a linear layer into ``out`` (m, o)."""
    if bias is None:
        return gemm(x2, wt, out)
    out.copy_(bias.expand_as(out))
    return gemm(x2, wt, out, beta=1.0)


def trim() -> int:
    """Free every cached block now; returns the bytes released."""
    return int(cpu_kernels.ops().pool_trim()) if cpu_kernels.has_op("pool_trim") else 0


class _LinearFn(torch.autograd.Function):
    """``F.linear`` with the (..., o) output and the (..., i) input gradient in pooled buffers
    (the same GEMMs). x (..., i), weight (o, i), bias (o,) or None -> (..., o)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])  # (m, i)
        out = empty(x2.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)  # (m, o)
        _mm_bias(x2, weight.t(), bias, out)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (m, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _dgrad(g2, weight).view(*x.shape)
        if ctx.needs_input_grad[1]:
            gw = _wgrad(g2, x.reshape(-1, x.shape[-1]), weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


# Skinny products: MKL's float32 GEMM is slow when the output has very few columns (measured on the
# AMD EPYC of benchmarks/results/backbones.md, 32,768 rows, one thread: the weight gradient of a
# (128, 4) dt projection 12.4 ms as g^T x, 1.4 ms as (x^T g)^T; its input gradient 5.2 ms as g W,
# 2.5 ms as (W^T g^T)^T). A Mamba layer's dt projection has i = dt_rank = d_model / 16 inputs, so
# d_model 32-256 (dt_rank 2-16) is in that regime; the transposed product is formed instead.
SKINNY_WGRAD_MAX = 16  # wgrad of a weight (o, i) with i <= this < o: computed as (x^T g)^T
SKINNY_DGRAD_MAX = 8  # dgrad with i <= this < o: computed as (W^T g^T)^T, then made contiguous


def _wgrad(g2: Tensor, x2: Tensor, weight: Tensor) -> Tensor:
    """The weight gradient g2^T x2 (o, i) of a linear layer, g2 (m, o), x2 (m, i)."""
    o, i = weight.shape
    if i <= SKINNY_WGRAD_MAX and i < o:
        return torch.mm(x2.t(), g2).t().contiguous()
    return gemm(g2.t(), x2, torch.empty_like(weight))


def _dgrad(g2: Tensor, weight: Tensor) -> Tensor:
    """The input gradient g2 W (m, i) of a linear layer, g2 (m, o), weight (o, i); pooled when large."""
    o, i = weight.shape
    if i <= SKINNY_DGRAD_MAX and i < o:
        return torch.mm(weight.t(), g2.t()).t().contiguous()
    gx = empty(g2.shape[0], i, dtype=g2.dtype, device=g2.device)  # (m, i)
    return gemm(g2, weight, gx)


ONEDNN_MIN_ELEMENTS = 1 << 16  # smaller outputs stay on F.linear (per-call overheads dominate there)


def _own_gemm(x: Tensor, nbytes: int) -> bool:
    """A float32 CPU GEMM with an output / input gradient of ``nbytes`` takes :class:`_LinearFn`:
    pooled when large, or any size from ``ONEDNN_MIN_ELEMENTS`` up when oneDNN is the GEMM."""
    if _pooled(x.dtype, x.device, nbytes):
        return True
    return (
        nbytes >= 4 * ONEDNN_MIN_ELEMENTS
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and gemm_backend() == "onednn"
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for float32 CPU tensors through :func:`gemm` (pooled buffers for a
    large output / input gradient); everything else (tiny, float64, CUDA, mixed dtypes) is plain
    ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or not _own_gemm(x, max(weight.shape[0], weight.shape[1]) * rows * 4)
    ):
        return F.linear(x, weight, bias)
    return _LinearFn.apply(x, weight, bias)


class _SplitLinearFn(torch.autograd.Function):
    """``F.linear`` whose output columns are cut into pieces, each its own contiguous (..., o_k)
    output (one GEMM per piece on the matching rows of the weight; large ones pooled). Backward:
    the input gradient is the sum of the pieces' ``g_k @ W_k`` formed in one pooled buffer (a GEMM
    then in-place ``addmm_``), the weight gradient one GEMM per piece into its rows; a piece
    without a gradient counts as zero. x (..., i), weight (sum o_k, i), bias or None."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, sizes: tuple[int, ...]):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = sizes, bias is not None
        return _split_mm(x, weight, bias, sizes)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])  # (m, i)
        offs = [0]
        for o in ctx.sizes:
            offs.append(offs[-1] + o)
        gs = [None if g is None else g.reshape(-1, o) for g, o in zip(grads, ctx.sizes)]  # (m, o_k)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = empty(*x2.shape, dtype=x.dtype, device=x.device)  # (m, i)
            first = True
            for k, g in enumerate(gs):
                if g is None:
                    continue
                gemm(g, weight[offs[k] : offs[k + 1]], gx, beta=0.0 if first else 1.0)
                first = False
            if first:
                gx.zero_()
            gx = gx.view(*x.shape)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight) if any(g is None for g in gs) else torch.empty_like(weight)  # (o, i)
            for k, g in enumerate(gs):
                if g is not None:
                    gemm(g.t(), x2, gw[offs[k] : offs[k + 1]])  # a block of whole rows: contiguous
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.cat([g.sum(0) if g is not None else weight.new_zeros(o) for g, o in zip(gs, ctx.sizes)])
        return gx, gw, gb, None


def split_linear(x: Tensor, weight: Tensor, bias: Tensor | None, sizes: list[int] | tuple[int, ...]) -> tuple[Tensor, ...]:
    """``torch.split(F.linear(x, weight, bias), sizes, -1)`` with every piece contiguous: one GEMM
    per piece, large float32 CPU outputs (and in training the input gradient) in pooled buffers,
    and one autograd node for all the pieces (:class:`_SplitLinearFn`)."""
    sizes = tuple(int(o) for o in sizes)
    rows = x.numel() // max(1, x.shape[-1])
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or not _own_gemm(x, max(sizes + (x.shape[-1],)) * rows * 4)
    ):
        lin = []
        lo = 0
        for o in sizes:
            lin.append(F.linear(x, weight[lo : lo + o], None if bias is None else bias[lo : lo + o]))
            lo += o
        return tuple(lin)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _SplitLinearFn.apply(x, weight, bias, sizes)
    return _split_mm(x, weight, bias, sizes)


def _split_mm(x: Tensor, weight: Tensor, bias: Tensor | None, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The pieces of ``x @ weight.T + bias`` (..., o_k), each one GEMM into a (pooled) buffer."""
    x2 = x.reshape(-1, x.shape[-1])  # (m, i)
    outs, lo = [], 0
    for o in sizes:
        out = empty(x2.shape[0], o, dtype=x.dtype, device=x.device)  # (m, o_k)
        _mm_bias(x2, weight[lo : lo + o].t(), None if bias is None else bias[lo : lo + o], out)
        outs.append(out.view(*x.shape[:-1], o))
        lo += o
    return tuple(outs)
