"""The Backbone protocol shared by every sequence mixer and stack.

A backbone maps a token stream ``(B, L, D) -> (B, L, D)``; it owns no embedding and no
head. It is streamable: ``forward(x, state)`` continues a stream from ``state`` and
returns the state after the last valid token, so a long input can be fed in chunks
(chunked prefill) and then continued token by token with ``step``.

Axis legend used across ``backbones/``: b batch, l length, d model width,
e inner width (expand * d), n state size, h heads, p head dim, k conv width.

State is a *pytree* (nested dict / list / tuple) of tensors, always float32 for the
recurrent parts, so it can be detached, moved, measured and saved with the helpers in
this file. ``None`` in a state means "empty" (for example an empty KV cache).

Padding convention: ``mask`` is an optional ``(B, L)`` bool tensor, ``True`` for real
tokens, and padding is on the right. Outputs at valid positions must equal those of an
unpadded run, and the returned state must be the state after each row's last valid
token. Outputs at padded positions are unspecified (callers ignore them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils._pytree import tree_flatten, tree_map

from .ops import cpu_kernels

State = Any  # pytree of tensors (dict / list / tuple / None)

__all__ = [
    "Backbone",
    "RMSNorm",
    "State",
    "detach_state",
    "state_nbytes",
    "state_to",
    "lengths_from_mask",
]


class Backbone(nn.Module):
    """Base class of every mixer and stack: ``(B, L, D) -> (B, L, D)`` with streaming state.

    Capability flags are class attributes, read by the conformance tests:

    - ``is_causal``: output at t does not depend on inputs after t.
    - ``supports_step``: ``init_state`` + ``step`` give O(1)-per-token streaming.
    - ``supports_state``: ``forward(x, state)`` continues a stream (chunked prefill).
    """

    is_causal: ClassVar[bool] = True
    supports_step: ClassVar[bool] = True
    supports_state: ClassVar[bool] = True
    d_model: int

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """Map ``x`` (B, L, D) to ``(y (B, L, D), state after the last valid token)``."""
        raise NotImplementedError

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Return the empty state for ``batch_size`` streams."""
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """Advance one token: ``x_t`` (B, D) -> ``(y_t (B, D), new state)``."""
        if not self.supports_step:
            raise NotImplementedError(f"{type(self).__name__} does not support step()")
        y, state = self.forward(x_t[:, None, :], state)
        return y[:, 0], state


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm of the rows of x (N, d) float32 on CPU through the compiled norm kernels
    (``csrc/gated_norm_cpu.cpp`` without a gate): one pass per row forward and backward, only the
    (N, 1) inverse RMS saved (the composite keeps (N, d) intermediates and runs ~10 ops backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        w = w.contiguous()
        out, r = cpu_kernels.ops().gated_rmsnorm_fwd(x, x.new_empty(0), w, x.shape[1], eps)
        ctx.save_for_backward(x, w, r)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, go: Tensor):  # type: ignore[override]
        x, w, r = ctx.saved_tensors
        gx, _, gw = cpu_kernels.ops().gated_rmsnorm_bwd(go.contiguous(), x, x.new_empty(0), w, r)
        return gx, gw, None


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no mean subtraction, learned scale)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and _rows_fast(x, self.weight):  # one token per row (decoding): one fused call
            return cpu_kernels.ops().rms_norm_rows(x.contiguous(), self.weight, self.eps)
        if _norm_compiled(x, self.weight):  # float32 CPU: one compiled pass per row (and backward)
            x2 = x.reshape(-1, x.shape[-1])
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormFn.apply(x2, self.weight, self.eps).view(x.shape)
            w = self.weight.detach().contiguous()
            return cpu_kernels.ops().gated_rmsnorm_fwd(x2, x2.new_empty(0), w, x.shape[-1], self.eps)[0].view(x.shape)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def _norm_compiled(x: Tensor, w: Tensor) -> bool:
    """The compiled row kernels of :class:`_RMSNormFn` apply: float32 CPU input and weight, some rows."""
    return (
        x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and cpu_kernels.has_op("gated_rmsnorm_bwd")
    )


def _rows_fast(x: Tensor, w: Tensor) -> bool:
    """The compiled one-token kernels apply: float32 CPU, no autograd."""
    return (
        x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and cpu_kernels.has_op("rms_norm_rows")
    )


def detach_state(state: State) -> State:
    """Cut the autograd graph of every tensor in ``state`` (for truncated BPTT)."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def state_to(state: State, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
    """Move every floating tensor in ``state`` to ``device`` / ``dtype``."""

    def move(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return tree_map(move, state)


def state_nbytes(state: State) -> int:
    """Total bytes held by the tensors of ``state``."""
    leaves, _ = tree_flatten(state)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))


def lengths_from_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """Valid lengths (B,) from a right-padded ``(B, L)`` mask (all ``length`` if None)."""
    if mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    if mask.shape != (batch, length):
        raise ValueError(f"mask must have shape {(batch, length)}, got {tuple(mask.shape)}")
    return mask.long().sum(-1)
