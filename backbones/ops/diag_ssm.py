"""Chunked diagonal linear time-invariant SSM: the S4D layer's sequence mode as matmuls.

Papers: "On the Parameterization and Initialization of Diagonal State Space Models" (S4D,
Gu et al., 2022) computes ``y = K * u`` with the Vandermonde kernel
``K[l] = Re(sum_n c_n b_n a_n^l)`` by FFT; "Transformers are SSMs" (Mamba-2, Dao & Gu,
2024) splits a scan into chunks: a dense (quadratic) product inside each chunk and a
state passed between chunks. For an LTI diagonal SSM

    x_t = a * x_{t-1} + b * u_t,     y_t = Re(sum_n c_n x_{t,n})

with chunks of T steps, chunk j (tokens ``jT .. jT+T-1``) entering with state ``X_j``:

- intra-chunk: ``y[jT+t] += sum_{s<=t} K[t-s] u[jT+s]``: one (T x T) Toeplitz matmul,
- chunk state: ``S_j = b sum_s a^(T-1-s) u[jT+s]``: one (T x 2N) matmul,
- between chunks: ``X_{j+1} = a^T X_j + S_j``: J = L/T small steps on (B, H, N) (a
  loop touches each state once; a parallel doubling scan moved ~log2(J) times more data),
- free response: ``y[jT+t] += Re(sum_n c_n a^(t+1) X_j)``: one (2N x T) matmul.

Work is O(B H L (T + 4N)) multiply-adds, all in batched matmuls (no FFT, no log L
factor), memory O(B H L + B H N L / T), and the autograd graph holds the same tensors
(no (H, N, L) tensor anywhere). Every power ``a^k`` is evaluated from its own exponent;
``b`` and ``c`` are folded into the small per-channel tables (``b a^t``, ``c a^(t+1)``).
The output equals :func:`fftconv.fft_causal_conv` with :func:`fftconv.ssm_kernel` plus
:func:`fftconv.ssm_free_response` and the state :func:`fftconv.ssm_final_state`; the
float64 sequential recurrence :func:`diag_ssm_reference` is what the tests compare to.

Axis legend: b batch, h channels, l length, j chunk, t / s position in a chunk, n modes.
Tensors are channels-first ``(B, H, L)``; complex tensors are ``(.., N)`` complex64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fftconv import _powers_ri

__all__ = ["diag_ssm_chunked", "diag_ssm_reference", "default_chunk"]


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous. The chunk outputs
    ``(H, B J, T)`` are read back channels-last by the layer, so their gradient arrives as a
    transposed view; ``bmm``'s backward on such a gradient clones it one (B J, T) matrix at a
    time (2 H small strided copies, 12% of an S4D training step at 64K). One transpose copy here
    replaces them."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return g.contiguous()


def default_chunk(length: int, modes: int) -> int:
    """Chunk length T ~ sqrt(L) / 2, a power of two in 16..128, never longer than the input.

    The per-channel tables cost O(H T (T + N)) (paid once per call) and the chunk loop
    O(L / T) steps; measured fastest at d 256, N/2 32 on one thread: T 16 at 1K, 32 at 4K,
    64 at 16K (``modes`` is accepted for a future state-size dependent choice).
    """
    t = 1 << min(7, max(4, max(length, 1).bit_length() // 2 - 1))
    return max(1, min(t, length))


def _power(log_a: Tensor, k: int) -> Tensor:
    """``a^k`` (H, N) complex, from its exponent."""
    re, im = _powers_ri(log_a, torch.tensor([k], device=log_a.device))
    return torch.complex(re[..., 0], im[..., 0])


def diag_ssm_chunked(
    u: Tensor,
    log_a: Tensor,
    b: Tensor,
    c: Tensor,
    x0: Tensor | None = None,
    *,
    skip: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``x_t = a x_{t-1} + b u_t, y_t = Re(sum_n c_n x_t) (+ skip u_t)`` over ``u`` in chunks.

    Args:
        u: input ``(B, H, L)`` real.
        log_a: ``log a`` ``(H, N)`` complex (``Re < 0`` for a stable SSM).
        b, c: ``(H, N)`` complex (any factor 2 for conjugate pairs goes into ``c``).
        x0: state before the first token ``(B, H, N)`` complex, or None for zeros.
        skip: optional ``(H,)`` real feed-through ``D`` (folded into the kernel's tap 0: free).
        chunk: chunk length T (default :func:`default_chunk`).
    Returns:
        ``(y (B, H, L) real, x_L (B, H, N) complex)``: outputs and the state after token L-1.
    """
    B, H, L = u.shape
    N = log_a.shape[-1]
    rdt, cdt = log_a.real.dtype, log_a.dtype
    if L == 0:
        x = torch.zeros(B, H, N, dtype=cdt, device=u.device) if x0 is None else x0.to(cdt)
        return u.to(rdt), x
    T = chunk or default_chunk(L, N)
    J = -(-L // T)
    dev = u.device
    # ---- per-channel tables (independent of the batch), all from a^t, t < T ----
    # b and c are folded into the tables (complex broadcasts over (B, H, J, N) are slow on CPU)
    re, im = _powers_ri(log_a, torch.arange(T, device=dev))  # (H, N, T)
    coef = torch.stack([b, c * torch.exp(log_a)], 1)  # (H, 2, N): [b; c a]
    fr, fi = coef.real[..., None].to(rdt), coef.imag[..., None].to(rdt)  # (H, 2, N, 1)
    pr = fr * re[:, None] - fi * im[:, None]  # (H, 2, N, T): Re [b a^t; c a^(t+1)]
    pi = fr * im[:, None] + fi * re[:, None]  # Im
    cr, ci = c.real[..., None].to(rdt), c.imag[..., None].to(rdt)  # (H, N, 1)
    k = (cr * pr[:, 0] - ci * pi[:, 0]).sum(1)  # (H, T): K[l] = Re(sum_n c b a^l)
    if skip is not None:
        k = torch.cat([k[:, :1] + skip.to(rdt)[:, None], k[:, 1:]], 1)  # D u_t is tap 0 of the convolution
    kw = torch.nn.functional.pad(k, (T - 1, 0)).unfold(-1, T, 1)  # (H, T, T): kw[i, t] = K[t - (T-1-i)], 0 if < 0
    toep = kw.flip(1)  # (H, T_s, T_t): K[t-s] for t >= s, else 0
    Vr = torch.stack([pr[:, 0], pi[:, 0]], 2).flip(-1).flatten(1, 2).transpose(1, 2)  # (H, T, 2N): b a^(T-1-s)
    Vo = torch.stack([pr[:, 1], -pi[:, 1]], 2).flatten(1, 2)  # (H, 2N, T): Re(c a^(t+1) X) = [Re X, Im X] . [Re, -Im]
    # ---- chunk-end states from each chunk's own input ----
    ut = torch.nn.functional.pad(u.to(rdt), (0, J * T - L))  # (B, H, J T), zero tail
    ut = ut.view(B, H, J, T).transpose(0, 1).reshape(H, B * J, T)  # (H, B J, T)
    s = torch.view_as_complex(torch.bmm(ut, Vr).view(H, B, J, N, 2))  # (H, B, J, N): S_j = b sum_s a^(T-1-s) u[jT+s]
    # ---- states entering each chunk: X_0 = x0, X_{j+1} = a^T X_j + S_j (J small steps) ----
    aT = _power(log_a, T)[:, None]  # (H, 1, N)
    xj = torch.zeros(H, B, N, dtype=cdt, device=dev) if x0 is None else x0.to(cdt).transpose(0, 1)  # (H, B, N)
    states = [xj]
    for sj in s.unbind(2)[: J - 1]:  # unbind, not s[:, :, j]: one gradient buffer for all steps, not one each
        xj = torch.addcmul(sj, aT, xj)  # a^T X_j + S_j in one op
        states.append(xj)
    X = torch.stack(states, 2)  # (H, B, J, N)
    # ---- free response of the entering states: Re(c a^(t+1) X_j) ----
    w = torch.view_as_real(X).reshape(H, B * J, 2 * N)  # (H, B J, 2N)
    y = torch.baddbmm(torch.bmm(ut, toep), w, Vo)  # (H, B J, T): intra-chunk + free response
    if y.requires_grad:
        y = _ContiguousGrad.apply(y)
    y = y.view(H, B, J * T).transpose(0, 1)[..., :L]  # (B, H, L)
    # ---- final state: a^r X_{J-1} + b sum_{s<r} a^(r-1-s) u[(J-1)T + s], r valid in the last chunk ----
    r = L - (J - 1) * T
    last = u[..., (J - 1) * T :].to(rdt)  # (B, H, r)
    acc = torch.einsum("bhs,hsk->bhk", last, Vr[:, T - r :])  # (B, H, 2N): Vr[T-r+s] = b a^(r-1-s)
    xl = torch.view_as_complex(acc.reshape(B, H, N, 2))
    return y, xl + _power(log_a, r) * xj.transpose(0, 1)


def diag_ssm_reference(
    u: Tensor, log_a: Tensor, b: Tensor, c: Tensor, x0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Float64 sequential recurrence of :func:`diag_ssm_chunked` (for tests): ``(y, x_L)``."""
    B, H, L = u.shape
    a, b64, c64 = torch.exp(log_a.to(torch.complex128)), b.to(torch.complex128), c.to(torch.complex128)
    x = torch.zeros(B, H, log_a.shape[-1], dtype=torch.complex128) if x0 is None else x0.to(torch.complex128)
    ys = []
    for t in range(L):
        x = a * x + b64 * u[..., t, None].double()
        ys.append((c64 * x).sum(-1).real)
    y = torch.stack(ys, -1) if ys else u.new_zeros(B, H, 0, dtype=torch.float64)
    return y, x
