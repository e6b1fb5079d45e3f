"""Large CPU tensors backed by transparent huge pages, and a linear layer whose big outputs use them.

A fresh (l, e) float32 activation at long lengths is tens to hundreds of MB; glibc serves it with a
fresh ``mmap`` and the kernel faults it in one 4 KiB page at a time on first touch (one fault and
one zeroed page per 4 KiB). On a virtual machine each fault is microseconds: measured here, writing
a fresh 128 MiB tensor took ~0.09 s of CPU, ~0.07 s of it in the kernel; with
``madvise(MADV_HUGEPAGE)`` on the range before the first touch (2 MiB pages, 512x fewer faults) it
took ~0.02 s. A Mamba training step at 64K tokens allocates ~2 GB of such tensors, so this is the
difference between a step that is ~20 % page faults and one that is not. Where THP is disabled
("never"), on non-Linux systems or on CUDA, :func:`empty` is plain ``torch.empty``.

``LONGSTREAM_NO_HUGEPAGES=1`` turns it off (read at each call, here and in the C++ kernels).
torch's own ``THP_MEM_ALLOC_ENABLE=1`` does the same for every allocation, but it is read once when
torch starts; this module applies it to the tensors of our kernels, whoever imported torch first.

Axis legend: b batch, l length, i input width, o output width.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MIN_BYTES", "empty", "empty_like", "linear"]

MIN_BYTES = 4 << 20  # below this, glibc serves the block from its heap (reused pages: no faults)
_MADV_HUGEPAGE = 14
_PAGE = 4096
_libc = None


def _madvise():
    if os.environ.get("LONGSTREAM_NO_HUGEPAGES", "0") not in ("", "0"):
        return None
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                lib.madvise.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


def advise(t: Tensor) -> Tensor:
    """Mark the pages of a freshly allocated, not yet written CPU tensor for huge pages; returns t."""
    n = t.numel() * t.element_size()
    if t.device.type != "cpu" or n < MIN_BYTES:
        return t
    lib = _madvise()
    if lib is not None:
        p = t.data_ptr()
        a, end = (p + _PAGE - 1) & ~(_PAGE - 1), (p + n) & ~(_PAGE - 1)
        if end > a:
            lib.madvise(a, end - a, _MADV_HUGEPAGE)  # a hint: failure (THP "never") changes nothing
    return t


def empty(*shape: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """``torch.empty(shape)``; on CPU, when large, backed by huge pages (see the module docstring)."""
    return advise(torch.empty(*shape, dtype=dtype, device=device))


def empty_like(t: Tensor) -> Tensor:
    """Contiguous :func:`empty` with t's shape, dtype and device."""
    return empty(*t.shape, dtype=t.dtype, device=t.device)


def _mm_out(x2: Tensor, w: Tensor, b: Tensor | None, out2: Tensor) -> Tensor:
    """out2 (m, o) = x2 (m, i) @ w.T (+ b)."""
    if b is None:
        return torch.mm(x2, w.t(), out=out2)
    return torch.addmm(b, x2, w.t(), out=out2)


class _LinearFn(torch.autograd.Function):
    """``F.linear`` with the (..., o) output and the (..., i) input gradient in huge-page memory.
    x (..., i), weight (o, i), bias (o,) or None -> (..., o)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])  # (m, i)
        out = empty(x2.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
        _mm_out(x2, weight, bias, out)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])  # (m, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = empty(g2.shape[0], weight.shape[1], dtype=g.dtype, device=g.device)
            torch.mm(g2, weight, out=gx)
            gx = gx.view(*x.shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t().mm(x.reshape(-1, x.shape[-1]))  # (o, i)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, with huge-page outputs for large CPU results (same values:
    the same GEMM). Small, non-CPU or mixed-dtype calls are plain ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    big = max(weight.shape[0], weight.shape[1]) * rows * x.element_size() >= MIN_BYTES
    if (
        not big
        or x.device.type != "cpu"
        or x.dtype != weight.dtype
        or (bias is not None and bias.dtype != x.dtype)
        or _madvise() is None
    ):
        return F.linear(x, weight, bias)
    return _LinearFn.apply(x, weight, bias)
