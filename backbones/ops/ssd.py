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
PyTorch: every contraction is one batched GEMM on contiguous operands with the heads of a
group side by side (the (t, s) decay matrix is the only per-head tensor); the cross-chunk
recurrence is a custom autograd function (a loop of multiply-adds, reversed in the backward);
without autograd the states are never materialised (one chunk at a time, the state stays in
cache). Decay exponents are clamped at exp(-60), below float32 resolution, so nothing
underflows to denormals (which slow x86 arithmetic ~10x). :func:`ssd_scan_ref` is the
float64 step-by-step reference; on CUDA ``mamba_ssm``'s Triton kernel is used if importable.

On CPU, when the compiled kernels are built (``cpu_kernels``), ``csrc/ssd_cpu.cpp`` runs the same
algorithm one chunk at a time with every intermediate in cache (MKL GEMMs on raw pointers, fused
loops between them), forward and backward (:class:`_SSDCppFn`); x, B, C go in as strided views,
so the split of the conv output is never copied. The PyTorch path stays as the fallback.

Axis legend: b batch, l length, c chunk, t / s positions in a chunk, h heads, p head dim,
g groups, n state size. Layout: x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n);
state (b, h, p, n) float32 (mamba_ssm's order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import bigbuf, cpu_kernels

__all__ = ["ssd_scan", "ssd_scan_packed", "ssd_scan_ref"]

_EXP_FLOOR = -60.0  # exp(-60) = 8.8e-27
_COMPILED = True  # use csrc/ssd_cpu.cpp on CPU when built (False: the PyTorch path, kept for tests)
_HANDWRITTEN_BACKWARD = True  # training path: _SSDBlockFn (False: autograd through _ssd_block, kept for tests)


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


class _ChunkScan(torch.autograd.Function):
    """Carry states across chunks: ``s_{k+1} = d_k s_k + S_k``. Returns one buffer of all
    states ``(s_0, ..., s_c)``: ``[:, :c]`` are the states entering each chunk, ``[:, c]`` the
    state leaving the block. A loop of c in-cache multiply-adds (2 flops per state entry per
    chunk, against 2T for the GEMM that made S); the backward runs it in reverse and gets the
    decay gradients in one vectorised reduction. S (b, c, h, p, n), d (b, c, h, 1, 1),
    s0 (b, h, p, n) -> (b, c+1, h, p, n)."""

    @staticmethod
    def forward(ctx, S: Tensor, d: Tensor, s0: Tensor) -> Tensor:  # type: ignore[override]
        b, c = S.shape[:2]
        buf = S.new_empty(b, c + 1, *S.shape[2:])
        buf[:, 0] = s0
        for k in range(c):
            torch.addcmul(S[:, k], buf[:, k], d[:, k], out=buf[:, k + 1])
        ctx.save_for_backward(buf, d)
        return buf

    @staticmethod
    def backward(ctx, g_buf: Tensor):  # type: ignore[override]
        buf, d = ctx.saved_tensors
        c = d.shape[1]
        gS = torch.empty_like(buf[:, 1:])
        G = g_buf[:, c]  # grad of s_{k+1}
        for k in range(c - 1, -1, -1):
            gS[:, k] = G
            G = torch.addcmul(g_buf[:, k], G, d[:, k])
        gd = (gS * buf[:, :c]).sum((3, 4), keepdim=True)  # (b, c, h, 1, 1)
        return gS, gd, G


def _ssd_block(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, st: Tensor, T: int,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One block of whole chunks (l a multiple of T). x (b, l, h, p), dt (b, l, h) after
    softplus, A (h,), B, C (b, l, g, n) per group (shared by the j = h/g heads of a group,
    h = (g, j)), D (h, 1) / (h, p) or None, st the entering state (b, h, p, n).

    Every contraction is one batched GEMM over (b, c, g) with the heads of a group side by side
    ((j p, T) @ (T, n) for the chunk states, (T, n) @ (n, j p) for the output of the entering
    states); only the (t, s) decay matrix and its product with x are per head. Decay exponents
    are clamped at ``_EXP_FLOOR``: terms below exp(-60) are invisible in float32, and letting them
    underflow to denormals slows every later multiply and GEMM on x86 by up to ~10x."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    j, c = h // g, l // T
    bcg = b * c * g
    xdt = x * dt[..., None]  # (b, l, h, p)
    cs = (dt * A).reshape(b, c, T, h).cumsum(2)  # (b, c, t, h) log decay from the chunk start to t (inclusive)
    Cc = C.reshape(b, c, T, g, n).transpose(2, 3).reshape(bcg, T, n)  # (bcg, t, n); a view when g = 1
    Bc = B.reshape(b, c, T, g, n).transpose(2, 3).reshape(bcg, T, n)  # (bcg, s, n)
    # 1. within chunks: y_t += sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) x_s. The causal mask rides on
    #    C.B (per group); the per-head exponent is clamped to [floor, 0], so s > t gives exp(0) * 0.
    causal = torch.ones(T, T, dtype=x.dtype, device=x.device).tril()
    CB = (torch.bmm(Cc, Bc.transpose(1, 2)) * causal).view(b, c, g, 1, T, T)  # (b, c, g, 1, t, s)
    csT = cs.transpose(2, 3).contiguous()  # (b, c, h, t); contiguous, so seg and scores are too
    seg = (csT[..., :, None] - csT[..., None, :]).clamp_(_EXP_FLOOR, 0.0).exp_()  # (b, c, h, t, s)
    scores = seg.view(b, c, g, j, T, T) * CB  # (b, c, g, j, t, s) contiguous
    xh = xdt.reshape(b, c, T, h, p).transpose(2, 3).reshape(b * c * h, T, p)  # (bch, s, p): one copy
    y_diag = torch.bmm(scores.view(b * c * h, T, T), xh).view(b, c, h, T, p)  # (b, c, h, t, p)
    # 2. each chunk's own contribution to the state at its end: S^T = (x exp(cs_end - cs))^T B
    to_end = (cs[:, :, -1:] - cs).clamp_(min=_EXP_FLOOR).exp_()  # (b, c, s, h)
    xw = (xdt.reshape(b, c, T, h, p) * to_end[..., None]).view(b, c, T, g, j * p).transpose(2, 3)  # (b, c, g, s, jp)
    d = cs[:, :, -1].clamp(min=_EXP_FLOOR).exp().reshape(b, c, h, 1, 1)  # (b, c, h, 1, 1) whole-chunk decay
    e_cs = cs.clamp(min=_EXP_FLOOR).exp()[..., None]  # (b, c, t, h, 1) decay from the chunk start
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, st)):
        # 3. carry the states across chunks (a short sequential recurrence, exact)
        S = torch.bmm(xw.reshape(bcg, T, j * p).transpose(1, 2), Bc)  # (bcg, jp, n) = (b, c, h, p, n)
        states = _ChunkScan.apply(S.view(b, c, h, p, n), d, st)  # (b, c+1, h, p, n)
        # 4. contribution of the entering state: y_t += exp(cs_t) C_t . prev
        prev = states[:, :c].reshape(bcg, j * p, n)  # states entering each chunk
        y_off = torch.bmm(Cc, prev.transpose(1, 2)).view(b, c, g, T, j, p)  # (b, c, g, t, j, p)
        y_off = y_off.transpose(2, 3).reshape(b, c, T, h, p)  # a view when g = 1
        st = states[:, c]
    else:
        # 3 + 4 without autograd, one chunk at a time: the (h, p, n) state stays in cache and the
        # chunk states are never materialised: y_off_k = C_k s^T, then s = d_k s + xw_k^T B_k
        bg = b * g
        y_off = x.new_empty(c, bg, T, j * p)
        Cv, Bv, dv = Cc.view(b, c, g, T, n), Bc.view(b, c, g, T, n), d.view(b, c, g, j, 1, 1)
        s = st.reshape(bg, j * p, n).clone()
        for k in range(c):
            torch.bmm(Cv[:, k].reshape(bg, T, n), s.transpose(1, 2), out=y_off[k])
            s.view(b, g, j, p, n).mul_(dv[:, k])
            s.baddbmm_(xw[:, k].reshape(bg, T, j * p).transpose(1, 2), Bv[:, k].reshape(bg, T, n))
        y_off = y_off.view(c, b, g, T, j, p).permute(1, 0, 3, 2, 4, 5).reshape(b, c, T, h, p)  # a view when b = g = 1
        st = s.view(b, h, p, n)
    # (in-place adds on fresh tensors are autograd-safe; the order keeps y contiguous in (b, c, t, h, p))
    if out is not None:
        y = torch.mul(y_off, e_cs, out=out.view(b, c, T, h, p))
    else:
        y = y_off * e_cs
    y = y.add_(y_diag.transpose(2, 3)).reshape(b, l, h, p)
    if D is not None:
        y = y.addcmul_(x, D)
    return y, st


class _SSDBlockFn(torch.autograd.Function):
    """One block of :func:`_ssd_block` with a hand-written backward. The forward is the
    streaming no-autograd path and saves only the inputs (no per-head (t, s) matrices, no chunk
    states: memory per block is that of its inputs); the backward recomputes the decay factors,
    the scores and the chunk states and runs every contraction as one batched GEMM, in far fewer
    passes than autograd's graph of the same expression. Clamped exponents are treated as
    unclamped in the backward (the terms are below exp(-60)). Shapes as in :func:`_ssd_block`;
    D (h, 1) / (h, p) or None; returns (y (b, l, h, p), state leaving the block (b, h, p, n))."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, st, T):  # type: ignore[override]
        with torch.no_grad():
            y, st_out = _ssd_block(x, dt, A, B, C, D, st, T)
        ctx.save_for_backward(x, dt, A, B, C, D, st)
        ctx.T = T
        return y, st_out

    @staticmethod
    def backward(ctx, gy, g_st):  # type: ignore[override]
        x, dt, A, B, C, D, st = ctx.saved_tensors
        return (*_block_backward(gy, g_st, x, dt, A, B, C, D, st, ctx.T, ctx.needs_input_grad[2],
                                 ctx.needs_input_grad[5]), None)


class _SSDScanFn(torch.autograd.Function):
    """The whole (padded) sequence, blocks of ``step`` positions, as one autograd node: the
    forward writes every block into one output and saves the inputs plus the state entering each
    block (b, h, p, n); the backward runs :func:`_block_backward` over the blocks in reverse and
    writes into whole-sequence gradients (no concatenations, no per-block graph)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, st, T, step):  # type: ignore[override]
        sts = []
        with torch.no_grad():
            y = torch.empty_like(x)
            for i in range(0, x.shape[1], step):
                sts.append(st)
                sl = slice(i, i + step)
                _, st = _ssd_block(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], D, st, T, y[:, sl])
        ctx.save_for_backward(x, dt, A, B, C, D, torch.stack(sts))
        ctx.T, ctx.step = T, step
        return y, st

    @staticmethod
    def backward(ctx, gy, g_st):  # type: ignore[override]
        x, dt, A, B, C, D, sts = ctx.saved_tensors
        need_A, need_D = ctx.needs_input_grad[2], ctx.needs_input_grad[5]
        g_x, g_dt, g_B, g_C = (torch.empty_like(t) for t in (x, dt, B, C))
        g_A = torch.zeros_like(A) if need_A else None
        g_D = torch.zeros_like(D) if need_D else None
        G = g_st
        for k in range(sts.shape[0] - 1, -1, -1):
            sl = slice(k * ctx.step, (k + 1) * ctx.step)
            gx, gdt, gA, gB, gC, gD, G = _block_backward(
                gy[:, sl], G, x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], D, sts[k], ctx.T, need_A, need_D)
            g_x[:, sl], g_dt[:, sl], g_B[:, sl], g_C[:, sl] = gx, gdt, gB, gC
            if need_A:
                g_A += gA
            if need_D:
                g_D += gD
        return g_x, g_dt, g_A, g_B, g_C, g_D, G, None, None


def _block_backward(gy, g_st, x, dt, A, B, C, D, st, T, need_A, need_D):
    """Gradients of one block of :func:`_ssd_block` (see :class:`_SSDBlockFn`): returns those of
    (x, dt, A, B, C, D, entering state); g_st (b, h, p, n) or None is that of the leaving state."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    j, c = h // g, l // T
    bcg, jp = b * c * g, j * p
    gy = gy.contiguous()
    # recompute the forward's factors (same expressions as _ssd_block)
    xdt = x * dt[..., None]  # (b, l, h, p)
    cs = (dt * A).reshape(b, c, T, h).cumsum(2)  # (b, c, t, h)
    Cc = C.reshape(b, c, T, g, n).transpose(2, 3).reshape(bcg, T, n)  # (bcg, t, n)
    Bc = B.reshape(b, c, T, g, n).transpose(2, 3).reshape(bcg, T, n)  # (bcg, s, n)
    causal = torch.ones(T, T, dtype=x.dtype, device=x.device).tril()
    CB = (torch.bmm(Cc, Bc.transpose(1, 2)) * causal).view(b, c, g, 1, T, T)  # (b, c, g, 1, t, s)
    csT = cs.transpose(2, 3).contiguous()  # (b, c, h, t)
    seg = (csT[..., :, None] - csT[..., None, :]).clamp_(_EXP_FLOOR, 0.0).exp_().view(b, c, g, j, T, T)
    scores = seg * CB  # (b, c, g, j, t, s)
    xh = xdt.reshape(b, c, T, h, p).transpose(2, 3).reshape(b * c * h, T, p)  # (bch, s, p)
    gyh = gy.reshape(b, c, T, h, p).transpose(2, 3).reshape(b * c * h, T, p)  # (bch, t, p)
    # 1. within chunks: y_diag = scores @ xdt
    g_xh = torch.bmm(scores.view(b * c * h, T, T).transpose(1, 2), gyh)  # (bch, s, p)
    g_sc = torch.bmm(gyh, xh.transpose(1, 2)).view(b, c, g, j, T, T)  # (b, c, g, j, t, s)
    g_seg = g_sc.mul_(seg)  # (b, c, g, j, t, s) d loss / d seg
    g_CB = g_seg.sum(3).reshape(bcg, T, T).mul_(causal)  # (bcg, t, s)
    g_Cc = torch.bmm(g_CB, Bc)  # (bcg, t, n)
    g_Bc = torch.bmm(g_CB.transpose(1, 2), Cc)  # (bcg, s, n)
    g_diff = g_seg.mul_(CB).view(b, c, h, T, T)  # d loss / d (cs_t - cs_s) = g_seg * seg
    g_csT = g_diff.sum(4) - g_diff.sum(3)  # (b, c, h, t)
    g_cs = g_csT.transpose(2, 3).contiguous()  # (b, c, t, h)
    del seg, scores, g_sc, g_seg, g_diff, CB
    # 2. chunk states S_k = xw_k^T B_k, recurrence s_{k+1} = d_k s_k + S_k (recomputed)
    to_end = (cs[:, :, -1:] - cs).clamp_(min=_EXP_FLOOR).exp_()  # (b, c, s, h)
    xdt5 = xdt.view(b, c, T, h, p)
    xw = (xdt5 * to_end[..., None]).view(b, c, T, g, jp).transpose(2, 3).reshape(bcg, T, jp)  # (bcg, s, jp)
    S = torch.bmm(xw.transpose(1, 2), Bc).view(b, c, h, p, n)
    d = cs[:, :, -1].clamp(min=_EXP_FLOOR).exp().reshape(b, c, h, 1, 1)
    states = _chunk_states(S, d, st)  # (b, c+1, h, p, n)
    prev = states[:, :c].reshape(bcg, jp, n)
    # 3. entering-state output y_off = exp(cs_t) C_t . prev
    e_cs = cs.clamp(min=_EXP_FLOOR).exp()  # (b, c, t, h)
    yo = torch.bmm(Cc, prev.transpose(1, 2)).view(b, c, g, T, j, p).transpose(2, 3).reshape(b, c, T, h, p)
    gy5 = gy.view(b, c, T, h, p)
    g_cs += torch.linalg.vecdot(gy5, yo).mul_(e_cs)
    g_yo = (gy5 * e_cs[..., None]).view(b, c, T, g, jp).transpose(2, 3).reshape(bcg, T, jp)  # (bcg, t, jp)
    g_Cc.baddbmm_(g_yo, prev)
    g_prev = torch.bmm(g_yo.transpose(1, 2), Cc).view(b, c, h, p, n)  # (b, c, h, p, n)
    # reverse recurrence: gS_k = G_{k+1}, gd_k = <G_{k+1}, s_k>, G_k = g_prev_k + d_k G_{k+1}
    gS = torch.empty_like(S)
    G = g_st.contiguous() if g_st is not None else torch.zeros_like(st)
    for k in range(c - 1, -1, -1):
        gS[:, k] = G
        G = torch.addcmul(g_prev[:, k], G, d[:, k])
    gd = torch.linalg.vecdot(gS.flatten(3), states[:, :c].flatten(3))  # (b, c, h)
    g_cs[:, :, -1] += gd * d.view(b, c, h)
    gS = gS.view(bcg, jp, n)
    g_xw = torch.bmm(Bc, gS.transpose(1, 2)).view(b, c, g, T, j, p).transpose(2, 3).reshape(b, c, T, h, p)
    g_Bc.baddbmm_(xw, gS)
    g_te = torch.linalg.vecdot(g_xw, xdt5).mul_(to_end)  # (b, c, s, h): d loss / d (cs_end - cs_s)
    g_cs -= g_te
    g_cs[:, :, -1] += g_te.sum(2)
    g_xdt = g_xw.mul_(to_end[..., None])  # (b, c, s, h, p)
    g_xdt += g_xh.view(b, c, h, T, p).transpose(2, 3)
    g_xdt = g_xdt.view(b, l, h, p)
    # 4. cumsum, a = dt A, xdt = x dt, D
    g_a = g_cs.flip(2).cumsum(2).flip(2).reshape(b, l, h)
    g_dt = g_a * A + torch.linalg.vecdot(g_xdt, x)
    g_A = (g_a * dt).sum((0, 1)) if need_A else None
    g_x = g_xdt.mul_(dt[..., None])
    g_D = None
    if D is not None:
        g_x.addcmul_(gy, D)
        if need_D:
            g_D = (gy * x).sum((0, 1))
            g_D = g_D.sum(-1, keepdim=True) if D.shape[-1] == 1 else g_D
    g_B = g_Bc.view(b, c, g, T, n).transpose(2, 3).reshape(b, l, g, n)
    g_C = g_Cc.view(b, c, g, T, n).transpose(2, 3).reshape(b, l, g, n)
    return g_x, g_dt, g_A, g_B, g_C, g_D, G


class _SSDCppFn(torch.autograd.Function):
    """The whole (padded) sequence through the compiled kernels of ``csrc/ssd_cpu.cpp``: the
    forward runs chunk by chunk with every intermediate in cache and saves the inputs plus the
    state entering every ``K``-th chunk; the backward recomputes the states of each K-chunk block
    and runs the chunks in reverse. D (h, 1) / (h, p) or None; x (b, l, h, p) float32, l a
    multiple of T."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, st, T, K):  # type: ignore[override]
        D2 = _D2(D, x)
        y, st_out, saved = cpu_kernels.ops().ssd_fwd(x, dt, A, B, C, D2, st, T, K)
        ctx.save_for_backward(x, dt, A, B, C, D2, saved)
        ctx.T, ctx.K, ctx.D_shape = T, K, None if D is None else D.shape
        return y, st_out

    @staticmethod
    def backward(ctx, gy, g_st):  # type: ignore[override]
        x, dt, A, B, C, D2, saved = ctx.saved_tensors
        gfin = torch.zeros_like(saved[:, 0]) if g_st is None else g_st.float().contiguous()
        gx, gdt, gA, gB, gC, gD, g0 = cpu_kernels.ops().ssd_bwd(
            gy.float().contiguous(), gfin, x, dt, A, B, C, D2, saved, ctx.T, ctx.K)
        g_D = None
        if ctx.D_shape is not None:
            g_D = gD.sum(0)  # (h, p)
            g_D = g_D.sum(-1, keepdim=True) if ctx.D_shape[-1] == 1 else g_D
        return gx, gdt, gA.sum(0), gB, gC, g_D, g0, None, None


class _SSDCppPackedFn(torch.autograd.Function):
    """:class:`_SSDCppFn` reading x, B, C from one packed (b, l, h p + 2 g n) tensor ``[x | B | C]``
    (Mamba-2's conv output) as strided views, and writing their gradients into one pooled buffer of
    that layout (``ssd_bwd_into``): no split, no concatenation of the three gradients."""

    @staticmethod
    def forward(ctx, xBC, dt, A, D, st, hp, gn, T, K):  # type: ignore[override]
        x, B, C = _unpack(xBC, hp, gn)
        D2 = _D2(D, x)
        y, st_out, saved = cpu_kernels.ops().ssd_fwd(x, dt, A, B, C, D2, st, T, K)
        ctx.save_for_backward(xBC, dt, A, D2, saved)
        ctx.hp, ctx.gn, ctx.T, ctx.K, ctx.D_shape = hp, gn, T, K, None if D is None else D.shape
        return y, st_out

    @staticmethod
    def backward(ctx, gy, g_st):  # type: ignore[override]
        xBC, dt, A, D2, saved = ctx.saved_tensors
        x, B, C = _unpack(xBC, ctx.hp, ctx.gn)
        g_xBC = bigbuf.empty(*xBC.shape, dtype=torch.float32, device=xBC.device)
        gx, gB, gC = _unpack(g_xBC, ctx.hp, ctx.gn)
        gfin = torch.zeros_like(saved[:, 0]) if g_st is None else g_st.float().contiguous()
        gy = torch.zeros_like(x) if gy is None else gy.float().contiguous()
        gdt, gA, gD, g0 = cpu_kernels.ops().ssd_bwd_into(gy, gfin, x, dt, A, B, C, D2, saved, ctx.T, ctx.K, gx, gB, gC)
        g_D = None
        if ctx.D_shape is not None:
            g_D = gD.sum(0)  # (h, p)
            g_D = g_D.sum(-1, keepdim=True) if ctx.D_shape[-1] == 1 else g_D
        return g_xBC, gdt, gA.sum(0), g_D, g0, None, None, None, None


def _unpack(xBC: Tensor, hp: tuple[int, int], gn: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Views x (b, l, h, p), B, C (b, l, g, n) of a packed (b, l, h p + 2 g n) tensor."""
    (h, p), (g, n) = hp, gn
    x, B, C = torch.split(xBC, [h * p, g * n, g * n], dim=-1)
    return x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))


def ssd_scan_packed(
    xBC: Tensor,
    hp: tuple[int, int],
    gn: tuple[int, int],
    dt: Tensor,
    A: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    *,
    block_chunks: int = 2,
    cpu_chunk: int = 64,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """:func:`ssd_scan` of x, B, C packed side by side in ``xBC`` (b, l, h p + 2 g n), ``[x | B | C]``
    (the layout of Mamba-2's conv output); dt (b, l, h) is used as given (bias and softplus already
    applied). hp = (h, p), gn = (g, n). In CPU float32 training with the compiled kernels the scan
    reads the three as views and returns one gradient for ``xBC`` (:class:`_SSDCppPackedFn`);
    everything else is :func:`ssd_scan` on the views. There the chunk is ``min(chunk_size, cpu_chunk)``
    and the entering state of every ``block_chunks``-th chunk is saved (h p n floats each; 1: all of
    them, the backward recomputes none). Default 2: at d_model 256, d_state 128, 16K tokens the
    training step measured 2% slower than with 1 and 5% faster than with 16, for 2 KB of saved
    state per token (4 KB with 1). Returns ``(y (b, l, h, p), final state)``."""
    (h, p), (g, n) = hp, gn
    if xBC.dim() != 3 or xBC.shape[-1] != h * p + 2 * g * n or h % g:
        raise ValueError(f"ssd_scan_packed expects xBC (b, l, {h * p + 2 * g * n}) with h % g == 0; "
                         f"got {tuple(xBC.shape)}, hp={hp}, gn={gn}")
    b, l, _ = xBC.shape
    Df = None if D is None else (D.float()[:, None] if D.dim() == 1 else D.float())  # (h, 1) / (h, p)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (xBC, dt, A, Df, initial_state))
    if (grad and xBC.dtype == torch.float32 and xBC.stride(-1) == 1 and l > 0 and _use_cpp(xBC, backend)):
        T = min(int(chunk_size), int(cpu_chunk))
        dtf = dt.float()
        pad = (-l) % T
        if pad:  # padded steps have dt = 0: no decay, no input
            xBC, dtf = F.pad(xBC, (0, 0, 0, pad)), F.pad(dtf, (0, 0, 0, pad))
        st = xBC.new_zeros(b, h, p, n) if initial_state is None else initial_state.float().contiguous()
        y, st = _SSDCppPackedFn.apply(xBC, dtf.contiguous(), A.float().contiguous(), Df, st, hp, gn, T,
                                      max(1, block_chunks))
        return (y[:, :l] if pad else y), st
    x, B, C = _unpack(xBC, hp, gn)
    return ssd_scan(x, dt, A, B, C, chunk_size, D=D, initial_state=initial_state, backend=backend)


def _D2(D: Tensor | None, x: Tensor) -> Tensor:
    """D as the kernels take it: (h, p) contiguous, or an empty tensor for None."""
    if D is None:
        return x.new_empty(0, 0)
    return D.expand(x.shape[2], x.shape[3]).contiguous()


def _use_cpp(x: Tensor, backend: str) -> bool:
    return (backend in ("auto", "cpp") and x.device.type == "cpu" and _COMPILED
            and cpu_kernels.has_op("ssd_fwd"))


def _chunk_states(S: Tensor, d: Tensor, s0: Tensor) -> Tensor:
    """(s_0, ..., s_c) of s_{k+1} = d_k s_k + S_k without autograd: (b, c+1, h, p, n)."""
    b, c = S.shape[:2]
    buf = S.new_empty(b, c + 1, *S.shape[2:])
    buf[:, 0] = s0
    for k in range(c):
        torch.addcmul(S[:, k], buf[:, k], d[:, k], out=buf[:, k + 1])
    return buf


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
    block_chunks: int = 16,
    cpu_chunk: int | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan. Returns ``(y (b, l, h, p), final state (b, h, p, n) float32)``.

    Args:
        x: (b, l, h, p).  dt: (b, l, h) before bias / softplus.  A: (h,) negative.
        B, C: (b, l, g, n) with h divisible by g.  D: (h,) or (h, p).  dt_bias: (h,).
        initial_state: (b, h, p, n) or None.  block_chunks: chunks computed per vectorised
        block (bounds memory; with the compiled kernels, the state is saved for the backward
        every ``block_chunks`` chunks).  cpu_chunk: on CPU the chunk actually used is
        ``min(chunk_size, cpu_chunk)`` (same result; the (t, s) decay work shrinks with it);
        None: 32 for compiled inference, else 64 (each the fastest measured on CPU).
        backend: "auto" / "torch" / "cpp" / "cuda".
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
    xf, Af, Bf, Cf = x.float(), A.float(), B.float(), C.float()
    Df = None if D is None else (D.float()[:, None] if D.dim() == 1 else D.float())  # (h, 1) / (h, p)
    st = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    st = st.contiguous()
    compiled = _use_cpp(xf, backend)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (xf, dt, Af, Bf, Cf, st) + (() if Df is None else (Df,)))
    if cpu_chunk is None:  # fastest on this CPU (interleaved, d_model 256, d_state 128): compiled 32 / 64, PyTorch 64
        cpu_chunk = 64 if grad or not compiled else 32  # compiled inference at 16K: 68 ms (32) vs 78 (64), 93 (128)
    T = min(int(chunk_size), int(cpu_chunk)) if x.device.type == "cpu" else int(chunk_size)
    pad = (-l) % T
    if pad:  # padded steps have dt = 0: no decay, no input, so the final state is unchanged
        xf, dt = F.pad(xf, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        Bf, Cf = F.pad(Bf, (0, 0, 0, 0, 0, pad)), F.pad(Cf, (0, 0, 0, 0, 0, pad))
    step = T * max(1, block_chunks)
    if compiled and l + pad > 0:  # the compiled chunk-by-chunk kernels
        # x, B, C go in as views (e.g. slices of the conv output): only their last two dims must be dense
        dense = lambda t: t if t.stride(3) == 1 and t.stride(2) == t.shape[3] else t.contiguous()
        args = [dense(xf), dt.contiguous(), Af.contiguous(), dense(Bf), dense(Cf)]
        if grad:
            y, st = _SSDCppFn.apply(*args, Df, st, T, max(1, block_chunks))
        else:
            y, st, _ = cpu_kernels.ops().ssd_fwd(*args, _D2(Df, xf), st, T, 0)
        return y[:, :l].to(dtype), st
    if backend == "cpp":
        raise RuntimeError("backend='cpp' needs the compiled CPU kernels (see longstream.backbones.ops.cpu_kernels)")
    ys = []
    # without autograd the blocks write into one output (no concatenation)
    y_all = xf.new_empty(b, l + pad, h, p) if not grad and l + pad > step else None
    # torch.split, not slicing: its backward concatenates instead of scattering into full-size zeros
    if grad and _HANDWRITTEN_BACKWARD and l + pad > 0:
        y, st = _SSDScanFn.apply(xf, dt, Af, Bf, Cf, Df, st, T, step)
        return y[:, :l].to(dtype), st
    for i, (xb, dtb, Bb, Cb) in enumerate(zip(*(t.split(step, 1) for t in (xf, dt, Bf, Cf)))):
        out = None if y_all is None else y_all[:, i * step : i * step + xb.shape[1]]
        y, st = _ssd_block(xb, dtb, Af, Bb, Cb, Df, st, T, out)
        ys.append(y)
    if y_all is not None:
        y = y_all[:, :l]
    else:
        y = (torch.cat(ys, 1) if len(ys) > 1 else ys[0])[:, :l] if ys else xf.new_zeros(b, 0, h, p)
    return y.to(dtype), st
