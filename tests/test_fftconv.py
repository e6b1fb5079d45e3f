"""FFT long-convolution helpers and diagonal-SSM kernels against direct float64 references."""

from __future__ import annotations

import pytest
import torch

import longstream.backbones.ops.fftconv as fc
from longstream.backbones.ops.fftconv import (
    causal_conv_with_history,
    direct_causal_conv_reference,
    fft_bidirectional_conv,
    fft_causal_conv,
    next_fast_len,
    right_align,
    ssm_final_state,
    ssm_free_response,
    ssm_kernel,
    ssm_kernel_and_state,
)


def _smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def test_next_fast_len_is_minimal_5_smooth():
    for n in range(1, 400):
        m = next_fast_len(n)
        assert m >= n and _smooth(m)
        assert all(not _smooth(j) for j in range(n, m))
    assert next_fast_len(2 * 10**6 - 1) == 2 * 10**6


def test_causal_conv_matches_direct_reference_all_paths(monkeypatch):
    u = torch.randn(2, 5, 97)
    for K in (97, 150, 13):  # full, longer than L (truncated), short (overlap-save blocks)
        k = torch.randn(5, K)
        ref = direct_causal_conv_reference(u, k)
        assert (fft_causal_conv(u, k).double() - ref).abs().max() < 1e-4
        assert (fft_causal_conv(u, k, block=16).double() - ref).abs().max() < 1e-4
    monkeypatch.setattr(fc, "_FFT_WORKSPACE", 300)  # force channel groups
    k = torch.randn(5, 97)
    with torch.no_grad():
        y = fft_causal_conv(u, k)
    assert (y.double() - direct_causal_conv_reference(u, k)).abs().max() < 1e-4


def test_causal_conv_gradient_matches_reference():
    u = torch.randn(1, 3, 40, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 40, dtype=torch.float64)
    (fft_causal_conv(u, k) * w).sum().backward()
    g1 = (u.grad.clone(), k.grad.clone())
    u.grad = k.grad = None
    (direct_causal_conv_reference(u, k) * w).sum().backward()
    torch.testing.assert_close(g1[0], u.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g1[1], k.grad, atol=1e-4, rtol=1e-4)


def test_bidirectional_conv_matches_direct():
    u, kf, kb = torch.randn(2, 3, 30), torch.randn(3, 30), torch.randn(3, 30)
    y = fft_bidirectional_conv(u, kf, kb).double()
    ref = direct_causal_conv_reference(u, kf)
    ub = u.double()
    for j in range(1, 30):  # anti-causal lags
        ref[..., : 30 - j] += kb[:, j - 1, None].double() * ub[..., j:]
    assert (y - ref).abs().max() < 1e-4
    # filters shorter than the input are zero beyond their taps
    y2 = fft_bidirectional_conv(u, kf[:, :5], kb[:, :4]).double()
    ref2 = direct_causal_conv_reference(u, kf[:, :5])
    for j in range(1, 5):
        ref2[..., : 30 - j] += kb[:, j - 1, None].double() * ub[..., j:]
    assert (y2 - ref2).abs().max() < 1e-4


def test_streamed_conv_equals_full():
    u, k = torch.randn(2, 4, 64), torch.randn(4, 20)
    full = fft_causal_conv(u, k)
    hist, outs = None, []
    for a, b in ((0, 7), (7, 8), (8, 40), (40, 64)):
        y, hist = causal_conv_with_history(u[..., a:b], k, hist, max_history=19)
        outs.append(y)
        assert hist.shape[-1] == min(b, 19)
    torch.testing.assert_close(torch.cat(outs, -1), full, atol=1e-5, rtol=1e-5)


def test_right_align():
    u = torch.arange(12.0).view(2, 1, 6)
    out = right_align(u, torch.tensor([6, 4]))
    assert out[0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert out[1, 0].tolist() == [0, 0, 6, 7, 8, 9]


def test_ssm_helpers_match_recurrence():
    H, N, T = 3, 4, 50
    log_a = torch.complex(-torch.rand(H, N) * 0.3, torch.randn(H, N))
    b = torch.randn(H, N, dtype=torch.cfloat)
    c = torch.randn(H, N, dtype=torch.cfloat)
    x0 = torch.randn(2, H, N, dtype=torch.cfloat)
    u = torch.randn(2, H, T)
    a = torch.exp(log_a)
    x, ys = x0.clone(), []
    for t in range(T):
        x = a * x + b * u[..., t, None]
        ys.append((c * x).sum(-1).real)
    y_seq = torch.stack(ys, -1)
    y = fft_causal_conv(u, ssm_kernel(c * b, log_a, T, block=16)) + ssm_free_response(x0, c, log_a, T, block=16)
    torch.testing.assert_close(y, y_seq, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ssm_final_state(u, b, log_a, x0, block=16), x, atol=1e-4, rtol=1e-4)
    K, xs = ssm_kernel_and_state(c * b, b, log_a, u, block=16)  # zero initial state
    torch.testing.assert_close(K, ssm_kernel(c * b, log_a, T), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs + x0 * torch.exp(log_a * T), x, atol=1e-4, rtol=1e-4)


def _float64_fft_reference(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u.double(), n=n) * torch.fft.rfft(k.double(), n=n), n=n)[..., :L]


def test_long_input_precision_float32_vs_float64():
    L = 1 << 17
    u = torch.randn(1, 2, L)
    k = torch.randn(2, L) * torch.exp(-torch.arange(L) / (L / 4))  # a long, slowly decaying filter
    with torch.no_grad():
        y = fft_causal_conv(u, k)
    ref = _float64_fft_reference(u, k)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.slow
def test_million_token_precision_and_streaming():
    L = 1_000_000
    u = torch.randn(1, 2, L)
    k = torch.randn(2, L) * torch.exp(-torch.arange(L) / (L / 4))
    with torch.no_grad():
        y = fft_causal_conv(u, k)
        a, h = causal_conv_with_history(u[..., : L // 2], k, None, L - 1)
        b, _ = causal_conv_with_history(u[..., L // 2 :], k, h, L - 1)
    ref = _float64_fft_reference(u, k)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    assert ((torch.cat([a, b], -1).double() - ref).norm() / ref.norm()).item() < 1e-5
