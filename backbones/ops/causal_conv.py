"""Causal depthwise conv1d with a streaming cache — the short convolution in front of the
scan in Mamba (Gu & Dao 2023) and Mamba-2 (Dao & Gu 2024), and in H3 / Hyena.

``y_t = bias + sum_k w[k] * x_{t-K+1+k}`` per channel, where inputs before the sequence come
from ``cache`` (the last K-1 inputs of the previous piece; zeros at the start of a stream),
so a sequence convolved in pieces equals it convolved whole. ``activation="silu"`` fuses the
SiLU that Mamba applies after the conv.

Paths: a compiled AVX2 kernel for inference on CPU (no grad), ``causal_conv1d``'s CUDA
kernel for CUDA tensors without a cache, and pure PyTorch (K shifted multiply-adds in the
time-major layout) everywhere else; :func:`causal_conv1d_ref` is the float64 reference.

Axis legend: b batch, l length, e channels, k kernel width.
Layout: x, y (b, l, e); weight (e, k); bias (e,); cache (b, e, k-1) (mamba_ssm's order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_update"]


def _act(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unknown activation {activation!r}; use None or 'silu'")


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, cache: Tensor | None = None, activation: str | None = None
) -> tuple[Tensor, Tensor]:
    """Float64 loop reference. Returns ``(y (b, l, e) float64, new cache (b, e, k-1) float64)``."""
    b, l, e = x.shape
    k = weight.shape[1]
    prev = x.new_zeros(b, k - 1, e) if cache is None else cache.transpose(1, 2)
    xp = torch.cat([prev.double(), x.double()], 1)  # (b, k-1+l, e)
    w = weight.double()
    ys = []
    for t in range(l):
        acc = torch.zeros(b, e, dtype=torch.float64) if bias is None else bias.double().expand(b, e).clone()
        for j in range(k):
            acc = acc + w[:, j] * xp[:, t + j]
        ys.append(acc)
    y = torch.stack(ys, 1) if ys else xp.new_zeros(b, 0, e)
    y = _act(y, activation)
    return y, xp[:, xp.shape[1] - (k - 1) :].transpose(1, 2)


class _ConvFn(torch.autograd.Function):
    """Training path: causal depthwise conv (+ SiLU) with a hand-written backward, so autograd
    keeps two (b, l, e) tensors instead of one per tap and the backward is K multiply-adds for
    dx plus K dot products for dw (no zero-filled slice gradients). The pre-activation comes from
    the compiled forward kernel when it is available, and the whole backward (SiLU', dx, dw,
    db, d cache) is one compiled ``conv_bwd`` call when the kernels are built.
    x (b, l, e), weight (e, k), bias (e,) or None, prev (b, k-1, e) -> y (b, l, e)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, prev: Tensor, silu: bool) -> Tensor:  # type: ignore[override]
        b, l, e = x.shape
        k = weight.shape[1]
        y = None
        if x.dtype == torch.float32 and e % 8 == 0 and k <= 8 and cpu_kernels.has_op("conv_fwd_train"):
            bias_ = torch.zeros(e) if bias is None else bias.float().contiguous()
            y, pre = cpu_kernels.ops().conv_fwd_train(
                x.contiguous(), weight.float().contiguous(), bias_, prev.float().contiguous(), silu
            )  # act(pre), pre: (b, l, e) each, one pass
        elif x.dtype == torch.float32 and e % 8 == 0 and k <= 8 and cpu_kernels.available():
            bias_ = torch.zeros(e) if bias is None else bias.float().contiguous()
            pre = cpu_kernels.ops().conv_fwd(x.contiguous(), weight.float().contiguous(), bias_, prev.float().contiguous(), False)
        else:
            xp = torch.cat([prev, x], 1)  # (b, k-1+l, e)
            pre = xp[:, k - 1 :] * weight[:, k - 1]
            if bias is not None:
                pre = pre + bias
            for j in range(k - 1):
                pre = torch.addcmul(pre, xp[:, j : j + l], weight[:, j])
        ctx.save_for_backward(x, weight, prev, pre)
        ctx.silu, ctx.has_bias = silu, bias is not None
        if y is not None:
            return y
        return F.silu(pre) if silu else pre

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, weight, prev, pre = ctx.saved_tensors
        b, l, e = x.shape
        k = weight.shape[1]
        if pre.dtype == torch.float32 and e % 8 == 0 and k <= 8 and cpu_kernels.has_op("conv_bwd"):
            gx, gw, gb, gprev = cpu_kernels.ops().conv_bwd(
                x.contiguous(), weight.float().contiguous(), prev.float().contiguous(), pre.contiguous(), g.float().contiguous(), ctx.silu
            )  # (b, l, e), (e, k), (e,), (b, k-1, e)
            return gx, gw.to(weight.dtype), gb if ctx.has_bias else None, gprev, None
        gp = torch.ops.aten.silu_backward(g, pre) if ctx.silu else g.contiguous()  # (b, l, e) grad of pre
        want_x = ctx.needs_input_grad[0]
        gx = torch.empty_like(x) if want_x else None
        gw = weight.new_zeros(e, k)
        # pre[t] = sum_j w[j] xp[t + j] with xp = [prev, x]: x[s] feeds pre[s + k-1-j] through tap j.
        # Time blocks of ~0.5 MB per (b, blk, e) tensor, so the ~3k passes of the backward stay in cache.
        blk = max(64, (1 << 17) // max(1, b * e))
        for t0 in range(0, l, blk):
            t1 = min(l, t0 + blk)
            gpb = gp[:, t0:t1]
            for j in range(k):
                s0 = t0 + j - (k - 1)  # xp index t0 + j is x index s0
                if s0 >= 0:
                    xs = x[:, s0 : s0 + t1 - t0]
                else:
                    xs = torch.cat([prev[:, k - 1 + s0 :], x[:, : max(0, t1 - t0 + s0)]], 1)[:, : t1 - t0]
                gw[:, j] += torch.linalg.vecdot(gpb, xs, dim=1).sum(0)
            if gx is not None:  # gx[s] = sum_j w[j] gp[s + k-1-j] (gp = 0 past the end)
                gxb = torch.mul(gpb, weight[:, k - 1], out=gx[:, t0:t1]) if gx.is_contiguous() and b == 1 else None
                if gxb is None:
                    gx[:, t0:t1] = gpb * weight[:, k - 1]
                    gxb = gx[:, t0:t1]
                for j in range(k - 1):
                    sh = k - 1 - j
                    hi = min(t1, l - sh)
                    if hi > t0:
                        gxb[:, : hi - t0].addcmul_(gp[:, t0 + sh : hi + sh], weight[:, j])
        gb = gp.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        gprev = None
        if ctx.needs_input_grad[3]:  # prev[u] = xp[u] feeds pre[u - j] for j <= u
            gprev = torch.zeros_like(prev)
            for u in range(k - 1):
                for j in range(k):
                    t = u - j
                    if 0 <= t < l:
                        gprev[:, u] += gp[:, t] * weight[:, j]
        return gx, gw, gb, gprev, None


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    cache: Tensor | None = None,
    activation: str | None = None,
    *,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Causal depthwise conv over (b, l, e). Returns ``(y (b, l, e), new cache (b, e, k-1))``.

    ``lengths`` (b,) gives each row's valid length under right padding: the returned cache is
    then the k-1 inputs before each row's end, as if the padding were never fed.
    ``backend``: "auto", "cpp", "torch" or "cuda".
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"causal_conv1d expects x (b, l, e) and weight (e, k); got {tuple(x.shape)}, {tuple(weight.shape)}")
    b, l, e = x.shape
    k = weight.shape[1]
    prev = x.new_zeros(b, k - 1, e) if cache is None else cache.transpose(1, 2).to(x.dtype)  # (b, k-1, e)
    if lengths is None and l >= k - 1:  # the new cache is the tail of x: no concatenation
        xp = None
        new_cache = x[:, l - (k - 1) :].transpose(1, 2)
    elif lengths is None:
        xp = torch.cat([prev, x], 1)  # (b, k-1+l, e)
        new_cache = xp[:, l:].transpose(1, 2)
    else:
        xp = torch.cat([prev, x], 1)
        idx = lengths.to(x.device).long()[:, None] + torch.arange(k - 1, device=x.device)  # (b, k-1)
        new_cache = xp.gather(1, idx[..., None].expand(b, k - 1, e)).transpose(1, 2)
    new_cache = new_cache.float().contiguous()

    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if backend in ("auto", "cuda") and x.is_cuda and (cache is None or not bool(cache.any())):
        from . import cuda

        if cuda.has_causal_conv1d():
            return cuda.causal_conv1d_cuda(x, weight, bias, activation), new_cache
    if backend == "cpp" and not cpu_kernels.available():
        raise RuntimeError("backend='cpp' requested but the compiled CPU kernels are not available")
    # the compiled conv is forward-only: with autograd on, the PyTorch path below is used
    if not grad and (backend == "cpp" or backend == "auto") and (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and e % 8 == 0
        and k <= 8
        and activation in (None, "silu", "swish")
        and cpu_kernels.available()
    ):
        bias_ = torch.zeros(e) if bias is None else bias.float().contiguous()
        y = cpu_kernels.ops().conv_fwd(
            x.contiguous(), weight.float().contiguous(), bias_, prev.float().contiguous(), activation is not None
        )
        return y, new_cache
    if grad and activation in (None, "silu", "swish") and x.device.type == "cpu" and backend in ("auto", "cpp", "torch"):
        return _ConvFn.apply(x, weight, bias, prev, activation is not None), new_cache
    # pure PyTorch: K shifted multiply-adds, time-major (no transposes)
    if xp is None:
        xp = torch.cat([prev, x], 1)  # (b, k-1+l, e)
    y = xp[:, k - 1 :] * weight[:, k - 1]
    if bias is not None:
        y = y + bias
    for j in range(k - 1):
        y = torch.addcmul(y, xp[:, j : j + l], weight[:, j])
    return _act(y, activation), new_cache


def causal_conv1d_update(
    x_t: Tensor, cache: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> tuple[Tensor, Tensor]:
    """One streaming step: x_t (b, e), cache (b, e, k-1) -> ``(y_t (b, e), new cache)``."""
    window = torch.cat([cache.to(x_t.dtype), x_t[:, :, None]], -1)  # (b, e, k)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return _act(y, activation), window[:, :, 1:].float()
