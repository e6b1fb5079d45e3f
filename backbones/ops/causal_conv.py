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
