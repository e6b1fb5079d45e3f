"""Dispatch to the CUDA kernels of ``mamba_ssm`` / ``causal_conv1d`` (Gu & Dao 2023; Dao &
Gu 2024), imported lazily and only for CUDA tensors. Nothing here is imported on CPU-only
installs; every function has a pure-PyTorch fallback in the sibling modules.

Axis legend: b batch, l length, e channels, n state size, h heads, p head dim, g groups.
Our layout is time-major (b, l, e); mamba_ssm's selective scan is channel-major (b, e, l),
so the wrappers transpose at the boundary.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "has_selective_scan",
    "has_causal_conv1d",
    "has_ssd",
    "selective_scan_cuda",
    "causal_conv1d_cuda",
    "ssd_cuda",
]


@functools.cache
def _import(name: str):
    try:
        if name == "selective_scan":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            return selective_scan_fn
        if name == "causal_conv1d":
            from causal_conv1d import causal_conv1d_fn

            return causal_conv1d_fn
        if name == "ssd":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            return mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA/ABI error raised at import
        return None
    return None


def has_selective_scan() -> bool:
    return torch.cuda.is_available() and _import("selective_scan") is not None


def has_causal_conv1d() -> bool:
    return torch.cuda.is_available() and _import("causal_conv1d") is not None


def has_ssd() -> bool:
    return torch.cuda.is_available() and _import("ssd") is not None


def selective_scan_cuda(u, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False) -> tuple[Tensor, Tensor]:
    """mamba_ssm ``selective_scan_fn`` on time-major tensors: ``(out (b,l,e), h_T (b,e,n))``."""
    fn = _import("selective_scan")
    t = lambda x: None if x is None else x.transpose(1, 2).contiguous()  # (b, l, *) -> (b, *, l)
    out, last = fn(
        t(u), t(dt), A.float().contiguous(), t(B), t(C),
        None if D is None else D.float(), t(z),
        None if dt_bias is None else dt_bias.float(), dt_softplus, True,
    )
    return out.transpose(1, 2), last.float()


def causal_conv1d_cuda(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:
    """``causal_conv1d_fn`` on x (b, l, e), weight (e, k) -> (b, l, e)."""
    fn = _import("causal_conv1d")
    return fn(x.transpose(1, 2), weight, bias, activation=activation).transpose(1, 2)


def ssd_cuda(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=True, initial_state=None):
    """mamba_ssm ``mamba_chunk_scan_combined``: x (b,l,h,p), dt (b,l,h), B/C (b,l,g,n)."""
    fn = _import("ssd")
    y, final = fn(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        initial_states=initial_state, return_final_states=True,
    )
    return y, final.float()
