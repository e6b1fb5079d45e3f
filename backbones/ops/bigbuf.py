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
count: the pool never raises the peak, it only keeps the memory mapped between calls (as the
CUDA caching allocator does). Without the compiled kernels, :func:`empty` is ``torch.empty``.

Axis legend: m rows, i input width, o output width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels

__all__ = ["MIN_BYTES", "empty", "empty_like", "linear", "trim"]

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
        if bias is None:
            torch.mm(x2, weight.t(), out=out)
        else:
            torch.addmm(bias, x2, weight.t(), out=out)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (m, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = empty(g2.shape[0], weight.shape[1], dtype=g.dtype, device=g.device)  # (m, i)
            torch.mm(g2, weight, out=gx)
            gx = gx.view(*x.shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t().mm(x.reshape(-1, x.shape[-1]))  # (o, i)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` with pooled buffers for a large float32 CPU output / input
    gradient; everything else (small, float64, CUDA, mixed dtypes) is plain ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or not _pooled(x.dtype, x.device, max(weight.shape[0], weight.shape[1]) * rows * 4)
    ):
        return F.linear(x, weight, bias)
    return _LinearFn.apply(x, weight, bias)
