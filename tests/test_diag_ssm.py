"""Chunked diagonal LTI SSM (the S4D sequence path) against the float64 recurrence and the FFT path."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones.ops.diag_ssm import default_chunk, diag_ssm_chunked, diag_ssm_reference
from longstream.backbones.ops.fftconv import fft_causal_conv, ssm_final_state, ssm_free_response, ssm_kernel


def _ssm(H: int = 3, N: int = 4, dtype=torch.cfloat, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    log_a = torch.complex(-torch.rand(H, N, generator=g) * 0.3 - 0.01, torch.randn(H, N, generator=g) * 3)
    b = torch.randn(H, N, dtype=torch.cfloat, generator=g)
    c = torch.randn(H, N, dtype=torch.cfloat, generator=g)
    return log_a.to(dtype), b.to(dtype), c.to(dtype)


@pytest.mark.parametrize("B,L,T", [(2, 50, 16), (1, 64, 16), (2, 7, 16), (2, 1, 4), (3, 100, 8), (1, 33, None), (2, 5, 1)])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_float64_recurrence(B, L, T, with_state):
    log_a, b, c = _ssm()
    u = torch.randn(B, 3, L)
    x0 = torch.randn(B, 3, 4, dtype=torch.cfloat) if with_state else None
    y, x = diag_ssm_chunked(u, log_a, b, c, x0, chunk=T)
    y_ref, x_ref = diag_ssm_reference(u, log_a, b, c, x0)
    assert y.shape == (B, 3, L) and x.shape == (B, 3, 4)
    assert (y.double() - y_ref).abs().max() < 1e-4
    assert (x.to(torch.complex128) - x_ref).abs().max() < 1e-4


def test_equals_fft_path_and_chunking_is_invisible():
    log_a, b, c = _ssm(H=4, N=6, seed=1)
    u = torch.randn(2, 4, 777)
    x0 = torch.randn(2, 4, 6, dtype=torch.cfloat)
    y_fft = fft_causal_conv(u, ssm_kernel(c * b, log_a, 777)) + ssm_free_response(x0, c, log_a, 777)
    x_fft = ssm_final_state(u, b, log_a, x0)
    for T in (1, 5, 16, 64, 128, 1000):
        y, x = diag_ssm_chunked(u, log_a, b, c, x0, chunk=T)
        torch.testing.assert_close(y, y_fft, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x, x_fft, atol=1e-4, rtol=1e-4)


def test_split_stream_equals_one_pass():
    log_a, b, c = _ssm(seed=2)
    u = torch.randn(2, 3, 300)
    y, x = diag_ssm_chunked(u, log_a, b, c)
    y1, x1 = diag_ssm_chunked(u[..., :123], log_a, b, c)
    y2, x2 = diag_ssm_chunked(u[..., 123:], log_a, b, c, x1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, atol=1e-4, rtol=1e-4)  # float32 chunk boundaries differ
    torch.testing.assert_close(x2, x, atol=1e-4, rtol=1e-4)


def test_empty_input():
    log_a, b, c = _ssm()
    x0 = torch.randn(1, 3, 4, dtype=torch.cfloat)
    y, x = diag_ssm_chunked(torch.zeros(1, 3, 0), log_a, b, c, x0)
    assert y.shape == (1, 3, 0)
    torch.testing.assert_close(x, x0)


def test_gradcheck_float64():
    log_a, b, c = _ssm(H=2, N=2, dtype=torch.complex128, seed=3)
    u = torch.randn(1, 2, 11, dtype=torch.float64)
    x0 = torch.randn(1, 2, 2, dtype=torch.complex128)
    leaves = [t.clone().requires_grad_() for t in (u, log_a, b, c, x0)]

    def f(u, la, b, c, x0):
        y, x = diag_ssm_chunked(u, la, b, c, x0, chunk=4)
        return y, torch.view_as_real(x)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)


def test_default_chunk_is_bounded():
    for L in (1, 3, 16, 1000, 1 << 14, 1 << 20):
        T = default_chunk(L, 32)
        assert 1 <= T <= min(L, 128)
        assert T == L or T >= 16


def test_memory_does_not_hold_state_per_token():
    """Autograd keeps O(B H L + B H N L / T) values: far below an (H, N, L) tensor."""
    H, N, L = 8, 32, 4096
    log_a, b, c = _ssm(H=H, N=N, seed=4)
    params = [t.requires_grad_() for t in (log_a, b, c)]
    u = torch.randn(1, H, L, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * (2 if t.is_complex() else 1))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = diag_ssm_chunked(u, *params)
    assert sum(saved) < 0.25 * H * N * L * 2  # an (H, N, L) complex tensor would be 2 H N L reals
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_skip_is_feed_through():
    log_a, b, c = _ssm(seed=5)
    u, d = torch.randn(2, 3, 70), torch.randn(3)
    y0, x0 = diag_ssm_chunked(u, log_a, b, c, chunk=16)
    y1, x1 = diag_ssm_chunked(u, log_a, b, c, skip=d, chunk=16)
    torch.testing.assert_close(y1, y0 + d[:, None] * u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x1, x0)
