"""Chunked state-space duality (SSD) scan of Mamba-2 (Dao & Gu, "Transformers are SSMs:
Generalized Models and Efficient Algorithms Through Structured State Space Duality", 2024).

Per head h with a *scalar* decay ``A_h`` and grouped inputs ``B, C`` (head h reads group
``h // (H / G)``)::

    h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T        (state (p, n) per head)
    y_t = h_t C_t + D_h x_t

The sequence is cut into chunks of ``chunk_size``. Inside a chunk the output is a masked
attention-like matmul with decay matrix ``exp(segsum(dt A))``; across chunks only the
(p, n) states are carried, one short recurrence per chunk. Chunks are processed in blocks,
so memory is bounded at any length (never a (b, l, h, p, n) tensor). Everything is plain
PyTorch matmuls (fast on CPU, differentiable by autograd). :func:`ssd_scan_ref` is the
float64 step-by-step reference; on CUDA ``mamba_ssm``'s Triton kernel is used if importable.

Axis legend: b batch, l length, c chunk, t / s positions in a chunk, h heads, p head dim,
g groups, n state size. Layout: x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n);
state (b, h, p, n) float32 (mamba_ssm's order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssd_scan", "ssd_scan_ref"]


def _prep(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool) -> Tensor:
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    return F.softplus(dt) if dt_softplus else dt


def ssd_scan_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Float64 sequential reference: ``(y (b, l, h, p) float64, final state (b, h, p, n) float64)``."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dt = _prep(dt.double(), None if dt_bias is None else dt_bias.double(), dt_softplus)
    Bh = B.double().repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.double().repeat_interleave(h // g, dim=2)
    xd, Ad = x.double(), A.double()
    st = x.new_zeros(b, h, p, n, dtype=torch.float64) if initial_state is None else initial_state.double()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * Ad)  # (b, h)
        st = decay[:, :, None, None] * st + (dt[:, t, :, None] * xd[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((st * Ch[:, t, :, None, :]).sum(-1))  # (b, h, p)
    y = torch.stack(ys, 1) if ys else xd.new_zeros(b, 0, h, p)
    if D is not None:
        Dd = D.double()
        y = y + xd * (Dd[:, None] if Dd.dim() == 1 else Dd)
    return y, st


def _ssd_block(x: Tensor, a: Tensor, B: Tensor, C: Tensor, st: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """One block of whole chunks. x (b, l, h, p) already multiplied by dt; a = dt*A (b, l, h);
    B, C (b, l, g, n) per group (shared by the h/g heads of a group); st (b, h, p, n).
    l is a multiple of T. Heads are split as h = (g, j), j the head within its group."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    j, c = h // g, l // T
    xc = x.reshape(b, c, T, g, j, p)
    Bc = B.reshape(b, c, T, g, n)
    Cc = C.reshape(b, c, T, g, n)
    cs = torch.cumsum(a.reshape(b, c, T, g, j).permute(0, 3, 4, 1, 2), -1)  # (b, g, j, c, t)
    # 1. within chunks: y_t += sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) x_s ; C.B is shared by a group's heads
    CB = torch.einsum("bctgn,bcsgn->bgcts", Cc, Bc)  # (b, g, c, t, s)
    seg = cs[..., :, None] - cs[..., None, :]  # (b, g, j, c, t, s)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    scores = torch.exp(seg.masked_fill_(~causal, float("-inf"))) * CB[:, :, None]  # (b, g, j, c, t, s)
    y = torch.einsum("bgjcts,bcsgjp->bctgjp", scores, xc)
    # 2. each chunk's own contribution to the state at its end
    to_end = torch.exp(cs[..., -1:] - cs)  # (b, g, j, c, t)
    xw = xc * to_end.permute(0, 3, 4, 1, 2)[..., None]  # (b, c, t, g, j, p)
    chunk_states = torch.einsum("bctgn,bctgjp->bcgjpn", Bc, xw).reshape(b, c, h, p, n)
    # 3. carry states across chunks, all at once: the state entering chunk i is
    #    sum_{k<i} exp(a_{k+1} + ... + a_{i-1}) S_k + exp(a_0 + ... + a_{i-1}) st, with a_k a chunk's total
    #    log decay and S_k its own contribution. Segment sums are reverse cumsums of masked copies
    #    (no differences of large cumsums, so no cancellation).
    tot = cs[..., -1].reshape(b, h, c)  # (b, h, c)
    seg_c = tot[..., None, :].expand(b, h, c + 1, c).tril(-1).flip(-1).cumsum(-1).flip(-1)  # (b, h, i, k)
    # seg_c[..., i, k] = a_k + ... + a_{i-1} for k < i (0 otherwise); S_k's weight is exp(seg_c[i, k+1])
    seg_next = torch.cat([seg_c[..., 1:], seg_c.new_zeros(b, h, c + 1, 1)], -1)
    w = torch.exp(seg_next).tril(-1)  # (b, h, i, k), i = 0..c (c: the state leaving the block)
    w0 = torch.exp(seg_c[..., 0])  # (b, h, i): decay of the block's entering state up to chunk i
    states = torch.einsum("bhik,bkhpn->bihpn", w, chunk_states) + w0.permute(0, 2, 1)[..., None, None] * st[:, None]
    prev = states[:, :c].reshape(b, c, g, j, p, n)  # state entering each chunk
    st = states[:, c]
    # 4. contribution of the entering state: y_t += exp(cs_t) C_t . prev
    y_off = torch.einsum("bctgn,bcgjpn->bctgjp", Cc, prev) * torch.exp(cs).permute(0, 3, 4, 1, 2)[..., None]
    return (y + y_off).reshape(b, l, h, p), st


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: Tensor | None = None,
    *,
    block_chunks: int = 64,
    cpu_chunk: int = 64,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan. Returns ``(y (b, l, h, p), final state (b, h, p, n) float32)``.

    Args:
        x: (b, l, h, p).  dt: (b, l, h) before bias / softplus.  A: (h,) negative.
        B, C: (b, l, g, n) with h divisible by g.  D: (h,) or (h, p).  dt_bias: (h,).
        initial_state: (b, h, p, n) or None.  block_chunks: chunks computed per vectorised
        block (bounds memory).  cpu_chunk: on CPU the chunk actually used is
        ``min(chunk_size, cpu_chunk)`` (same result; the (t, s) decay work shrinks with it, which
        is ~2.5x faster than 256 on CPU).  backend: "auto" / "torch" / "cuda".
    """
    if x.dim() != 4 or dt.shape != x.shape[:3] or B.dim() != 4 or C.shape != B.shape:
        raise ValueError(
            f"ssd_scan expects x (b,l,h,p), dt (b,l,h), B/C (b,l,g,n); got {tuple(x.shape)}, "
            f"{tuple(dt.shape)}, {tuple(B.shape)}, {tuple(C.shape)}"
        )
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if h % g:
        raise ValueError(f"heads ({h}) must be divisible by groups ({g})")
    if backend in ("auto", "cuda") and x.is_cuda:
        from . import cuda

        if cuda.has_ssd():
            return cuda.ssd_cuda(x, dt, A, B, C, chunk_size, D, None, dt_bias, dt_softplus, initial_state)
        if backend == "cuda":
            raise RuntimeError("backend='cuda' needs mamba_ssm")
    dtype = x.dtype
    dt = _prep(dt, dt_bias, dt_softplus)  # (b, l, h) float32
    xf = x.float()
    st = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    T = min(int(chunk_size), int(cpu_chunk)) if x.device.type == "cpu" else int(chunk_size)
    pad = (-l) % T
    xdt = xf * dt[..., None]
    a = dt * A.float()  # (b, l, h)
    Bh, Ch = B.float(), C.float()  # (b, l, g, n)
    if pad:  # padded steps have dt = 0: no decay, no input, so the final state is unchanged
        xdt, a = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        Bh, Ch = F.pad(Bh, (0, 0, 0, 0, 0, pad)), F.pad(Ch, (0, 0, 0, 0, 0, pad))
    ys = []
    step = T * max(1, block_chunks)
    for s0 in range(0, l + pad, step):
        s1 = min(l + pad, s0 + step)
        y, st = _ssd_block(xdt[:, s0:s1], a[:, s0:s1], Bh[:, s0:s1], Ch[:, s0:s1], st, T)
        ys.append(y)
    y = torch.cat(ys, 1)[:, :l] if ys else xf.new_zeros(b, 0, h, p)
    if D is not None:
        Df = D.float()
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    return y.to(dtype), st
