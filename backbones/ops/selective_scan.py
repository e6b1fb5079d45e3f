"""Selective scan, the recurrence of Mamba (Gu & Dao, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", 2023), for CPU and CUDA.

For each channel e and state index n, with input-dependent step ``dt``, ``B`` and ``C``::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t        y_t = C_t . h_t + D * u_t
    out_t = y_t * silu(z_t)                                  (if a gate z is given)

Three implementations share one signature and are tested against each other:

- ``backend="cpp"``: compiled AVX2 kernel (``csrc/scan_cpu.cpp``); walks the sequence once
  with the state in registers, forward and chunked-recompute backward. The default on CPU;
  in training (float32) the dt bias + softplus, the D skip and the SiLU gate are fused into
  both the forward and the backward kernel (``_FusedScanFn``). Its large outputs come from the
  kernels' pool of reused blocks (``ops/bigbuf.py``): no page faults after the first call.
- ``backend="torch"``: pure PyTorch, chunked: per chunk of ``chunk_size`` steps the decays
  ``exp(dt A)`` and inputs ``dt u B`` are computed in bulk, then one fused in-place
  ``addcmul`` per step. Memory is O(chunk * E * N), never a (B, L, E, N) tensor.
- ``backend="cuda"``: ``mamba_ssm``'s kernel when it imports and the tensors are on CUDA
  (it has no initial state, so a passed state falls back to the torch path).

:func:`selective_scan_ref` is the float64 step-by-step reference.

Axis legend: b batch, l length, e inner channels, n state size, c chunk, t step in chunk.
Layout is time-major: ``u, dt, z`` are (b, l, e); ``B, C`` are (b, l, n); ``A`` is (e, n);
the state is (b, e, n) float32. Both the initial state and the final state are explicit, so
scanning a sequence in pieces equals scanning it whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_kernels

__all__ = ["selective_scan", "selective_scan_ref", "scan_core"]

_CLAMP = -80.0  # exp(dt*A) below exp(-80) is treated as exp(-80): no slow denormals


# ----------------------------------------------------------------------------- reference
def selective_scan_ref(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Float64 sequential reference. Returns ``(out (b, l, e) float64, final state (b, e, n) float64)``."""
    u, dt, A, B, C = (t.double() for t in (u, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    b, l, e = u.shape
    h = u.new_zeros(b, e, A.shape[1]) if initial_state is None else initial_state.double()
    ys = []
    for t in range(l):
        dA = torch.exp(dt[:, t, :, None] * A)  # (b, e, n)
        h = dA * h + (dt[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # (b, e)
    y = torch.stack(ys, 1) if ys else u.new_zeros(b, 0, e)
    if D is not None:
        y = y + u * D.double()
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


# ----------------------------------------------------------------------------- torch path
def _torch_chunk_states(dt: Tensor, u: Tensor, A: Tensor, B: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """States after every step of one chunk. dt, u: (b, t, e); B: (b, t, n); h: (b, e, n).

    Returns ``(a, hs)``, both (b, t, e, n): the decays and the states h_1..h_t.
    """
    a = torch.exp((dt[..., None] * A).clamp_(min=_CLAMP))  # (b, t, e, n)
    hs = (dt * u)[..., None] * B[:, :, None, :]  # (b, t, e, n), becomes the states in place
    for a_i, hs_i in zip(a.unbind(1), hs.unbind(1)):
        hs_i.addcmul_(a_i, h)
        h = hs_i
    return a, hs


def _torch_fwd(u, dt, A, B, C, h0, chunk, save):
    b, l, e = u.shape
    y = u.new_empty(b, l, e)
    ckpts = []
    h = h0
    for c0 in range(0, l, chunk):
        c1 = min(l, c0 + chunk)
        if save:
            ckpts.append(h)
        _, hs = _torch_chunk_states(dt[:, c0:c1], u[:, c0:c1], A, B[:, c0:c1], h)
        y[:, c0:c1] = torch.einsum("bten,btn->bte", hs, C[:, c0:c1])
        h = hs[:, -1].clone()
    ck = torch.stack(ckpts, 1) if save and ckpts else u.new_empty(b, 0, e, A.shape[1])
    return y, h, ck


def _torch_bwd(u, dt, A, B, C, ck, dy, dhT, chunk):
    b, l, e = u.shape
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dB, dC = torch.empty_like(B), torch.empty_like(C)
    dA = torch.zeros_like(A)
    carry = dhT  # a_{t+1} * dL/dh_{t+1}, flowing backwards
    for ci in range((l + chunk - 1) // chunk - 1, -1, -1):
        c0, c1 = ci * chunk, min(l, ci * chunk + chunk)
        h0 = ck[:, ci]
        dtc, uc, Bc, Cc, g = dt[:, c0:c1], u[:, c0:c1], B[:, c0:c1], C[:, c0:c1], dy[:, c0:c1]
        a, hs = _torch_chunk_states(dtc, uc, A, Bc, h0)
        dC[:, c0:c1] = torch.einsum("bte,bten->btn", g, hs)
        dh = g[..., None] * Cc[:, :, None, :]  # (b, t, e, n), becomes dL/dh_t in place
        a_l, dh_l = a.unbind(1), dh.unbind(1)
        dh_l[-1].add_(carry)
        for i in range(len(dh_l) - 2, -1, -1):
            dh_l[i].addcmul_(a_l[i + 1], dh_l[i + 1])
        carry = a[:, 0] * dh[:, 0]
        hprev = torch.cat([h0[:, None], hs[:, :-1]], 1)  # (b, t, e, n)
        daa = dh * hprev * a  # dL/d(dt*A)
        dA += torch.einsum("bten,bte->en", daa, dtc)
        dxu = torch.einsum("bten,btn->bte", dh, Bc)  # dL/d(dt*u)
        dB[:, c0:c1] = torch.einsum("bten,bte->btn", dh, dtc * uc)
        du[:, c0:c1] = dxu * dtc
        ddt[:, c0:c1] = torch.einsum("bten,en->bte", daa, A) + dxu * uc
    return du, ddt, dA, dB, dC, carry


class _ScanFn(torch.autograd.Function):
    """Core recurrence without D, gate or softplus: returns ``(y (b,l,e), h_T (b,e,n))``."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk: int, use_cpp: bool):
        save = any(ctx.needs_input_grad[:6])
        if use_cpp:
            none = u.new_empty(0)
            y, hT, ck = cpu_kernels.ops().scan_fwd(
                u, dt, A.t().contiguous(), B, C, h0.transpose(1, 2).contiguous(), chunk, save, none, False, none, none
            )[:3]
            hT = hT.transpose(1, 2).contiguous()
        else:
            y, hT, ck = _torch_fwd(u, dt, A, B, C, h0, chunk, save)
        if save:
            ctx.save_for_backward(u, dt, A, B, C, ck)
        ctx.chunk, ctx.use_cpp = chunk, use_cpp
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, dt, A, B, C, ck = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        b, _, e = u.shape
        n = A.shape[1]
        dhT = u.new_zeros(b, e, n) if dhT is None else dhT.contiguous()
        if ctx.use_cpp:
            du, ddt, dAt, dBp, dCp, dh0 = cpu_kernels.ops().scan_bwd(
                u, dt, A.t().contiguous(), B, C, ck, dy, dhT.transpose(1, 2).contiguous(), ctx.chunk
            )
            dA, dB, dC, dh0 = dAt.sum(0).t(), dBp.sum(1), dCp.sum(1), dh0.transpose(1, 2)
        else:
            du, ddt, dA, dB, dC, dh0 = _torch_bwd(u, dt, A, B, C, ck, dy, dhT, ctx.chunk)
        return du, ddt, dA, dB, dC, dh0, None, None


class _FusedScanFn(torch.autograd.Function):
    """Training path of the compiled kernels with the prologue / epilogue fused on both sides:
    ``dt <- softplus(dt + dt_bias)``, ``y <- (y + D u) * silu(z)``. The forward is one
    ``scan_fwd`` call (it also stores the chunk checkpoints, the step it used and the softplus
    derivative, so the backward runs no softplus); the backward one ``scan_bwd_fused``
    call that returns the gradients of the raw dt, D, z and dt_bias too, so none of the
    (b, l, e) elementwise tensors of the unfused path (and their autograd copies) exist.
    All float32 contiguous; D, z, dt_bias may be empty (absent). Returns (out (b,l,e), h_T (b,e,n))."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D, z, dt_bias, h0, softplus: bool, chunk: int):  # type: ignore[override]
        At = A.t().contiguous()  # (n, e)
        y, hT, ck, dts, dsp = cpu_kernels.ops().scan_fwd(
            u, dt, At, B, C, h0.transpose(1, 2).contiguous(), chunk, True, dt_bias, softplus, D, z
        )
        # with a dt prologue the kernel returns the step it used (dts) and, for softplus, its
        # derivative (dsp); the backward reads those instead of the raw dt (not kept alive)
        ctx.save_for_backward(u, dts if dts.numel() else dt, At, B, C, D, z, dt_bias, ck, dts, dsp)
        ctx.chunk, ctx.softplus = chunk, softplus
        return y, hT.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dy, dhT):  # type: ignore[override]
        u, dt, At, B, C, D, z, dt_bias, ck, dts, dsp = ctx.saved_tensors
        b, _, e = u.shape
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dhT = u.new_zeros(b, At.shape[0], e) if dhT is None else dhT.transpose(1, 2).contiguous()  # (b, n, e)
        du, ddt, dAt, dBp, dCp, dh0, dDp, dz, dbp = cpu_kernels.ops().scan_bwd_fused(
            u, dt, At, B, C, ck, dy, dhT, ctx.chunk, dt_bias, ctx.softplus, D, z, dts, dsp
        )
        gD = dDp.sum(0) if D.numel() else None
        gz = dz if z.numel() else None
        gb = dbp.sum(0) if dt_bias.numel() else None
        return du, ddt, dAt.sum(0).t(), dBp.sum(1), dCp.sum(1), gD, gz, gb, dh0.transpose(1, 2), None, None


def scan_core(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, *, chunk_size: int = 64, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The bare recurrence (dt already positive): ``(y (b,l,e), h_T (b,e,n))``, float32.

    ``backend``: "auto" (C++ kernel on CPU when built, else torch), "cpp" or "torch".
    """
    f = torch.float64 if u.dtype == torch.float64 else torch.float32
    use_cpp = _want_cpp(u, backend) and f == torch.float32
    u, dt, B, C = (t.to(f).contiguous() for t in (u, dt, B, C))
    A, h0 = A.to(f), h0.to(f).contiguous()
    e = u.shape[-1]
    pad = (-e) % 8 if use_cpp else 0
    if pad:  # the kernel works on 8-channel registers; padded channels have dt = 0
        u, dt = F.pad(u, (0, pad)), F.pad(dt, (0, pad))
        A, h0 = F.pad(A, (0, 0, 0, pad)), F.pad(h0, (0, 0, 0, pad))
    y, hT = _ScanFn.apply(u, dt, A, B, C, h0, int(chunk_size), use_cpp)
    if pad:
        y, hT = y[..., :e], hT[:, :e]
    return y, hT


def _want_cpp(u: Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "cpp":
        if not cpu_kernels.available():
            raise RuntimeError("backend='cpp' requested but the compiled CPU kernels are not available")
        return True
    if backend != "auto":
        raise ValueError(f"unknown scan backend {backend!r}; use 'auto', 'cpp', 'torch' or 'cuda'")
    return u.device.type == "cpu" and cpu_kernels.available()


# ----------------------------------------------------------------------------- public op
def selective_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
    *,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Selective scan. Returns ``(out (b, l, e), final state (b, e, n) float32)``.

    Args:
        u: inputs (b, l, e).   dt: step sizes before ``dt_bias`` / softplus (b, l, e).
        A: (e, n), negative.   B, C: (b, l, n).   D: skip (e,).   z: gate (b, l, e).
        dt_bias: (e,).   dt_softplus: apply softplus to ``dt + dt_bias``.
        initial_state: (b, e, n) or None for zeros.
        chunk_size: steps per chunk (torch path) / checkpoint interval (backward).
        backend: "auto", "cpp", "torch" or "cuda".
    """
    if u.dim() != 3 or dt.shape != u.shape or B.dim() != 3 or C.shape != B.shape:
        raise ValueError(
            f"selective_scan expects u, dt (b, l, e) and B, C (b, l, n); got u {tuple(u.shape)}, "
            f"dt {tuple(dt.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if backend in ("auto", "cuda") and u.is_cuda:
        from . import cuda

        # mamba_ssm's kernel starts from zeros; an all-zero initial state is the same thing
        if cuda.has_selective_scan() and (initial_state is None or not bool(initial_state.any())):
            return cuda.selective_scan_cuda(u, dt, A, B, C, D, z, dt_bias, dt_softplus)
        if backend == "cuda":
            raise RuntimeError("backend='cuda' needs mamba_ssm and a zero / absent initial_state")
        backend = "torch"
    elif backend == "cuda":
        raise RuntimeError("backend='cuda' needs CUDA tensors")
    b, l, e = u.shape
    dtype = u.dtype
    h0 = u.new_zeros(b, e, A.shape[1], dtype=torch.float32) if initial_state is None else initial_state
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, dt, A, B, C, D, z, dt_bias, initial_state)
    )
    if (
        not needs_grad
        and u.dtype == torch.float32
        and e % 8 == 0
        and _want_cpp(u, backend)
    ):  # inference: softplus, D skip and gate fused into the compiled kernel
        f32 = lambda t: u.new_empty(0) if t is None else t.float().contiguous()
        y, hT = cpu_kernels.ops().scan_fwd(
            u.contiguous(), dt.float().contiguous(), A.float().t().contiguous(), B.float().contiguous(),
            C.float().contiguous(), h0.float().transpose(1, 2).contiguous(), int(chunk_size), False,
            f32(dt_bias), bool(dt_softplus), f32(D), f32(z),
        )[:2]
        return y, hT.transpose(1, 2).contiguous()
    if (
        needs_grad
        and e % 8 == 0
        and all(t is None or t.dtype == torch.float32 for t in (u, dt, A, B, C, D, z, dt_bias))
        and _want_cpp(u, backend)
        and cpu_kernels.has_op("scan_bwd_fused")
    ):  # training: softplus, D skip and gate fused into the compiled forward and backward
        c = lambda t: u.new_empty(0) if t is None else t.contiguous()
        y, hT = _FusedScanFn.apply(
            u.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), c(D), c(z), c(dt_bias),
            h0.float(), bool(dt_softplus), int(chunk_size),
        )
        return y, hT
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt if dt.dtype == torch.float64 else dt.float())
    y, hT = scan_core(u, dt, A, B, C, h0, chunk_size=chunk_size, backend=backend)
    if D is not None:
        y = torch.addcmul(y, u.to(y.dtype), D.to(y.dtype))
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype), hT
