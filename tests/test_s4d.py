"""S4D: Vandermonde kernel, convolution mode == recurrent mode, chunked state, padding."""

from __future__ import annotations

import math

import pytest
import torch

from longstream.backbones.s4d import S4D, s4d_reference


def make(init: str = "lin", d: int = 8, n: int = 8) -> S4D:
    m = S4D(d, d_state=n, init=init, dt_min=0.01, dt_max=0.5)
    with torch.no_grad():
        m.log_A_real.add_(torch.randn_like(m.log_A_real) * 0.3)  # heterogeneous decay rates
    return m


def test_init_lin_and_inv():
    lin, inv = S4D(2, d_state=8, init="lin"), S4D(2, d_state=8, init="inv")
    assert torch.allclose(lin.A_imag[0], math.pi * torch.arange(4.0))
    assert torch.allclose(inv.A_imag[0], (8 / math.pi) * (8 / (2 * torch.arange(4.0) + 1) - 1))
    assert torch.allclose(-torch.exp(lin.log_A_real), torch.full((2, 4), -0.5))
    with pytest.raises(ValueError):
        S4D(2, d_state=7)
    with pytest.raises(ValueError):
        S4D(2, init="legs")


def test_kernel_is_zoh_vandermonde():
    m = make()
    L = 64
    with torch.no_grad():
        dt = torch.exp(m.log_dt.double())
        A = torch.complex(-torch.exp(m.log_A_real.double()), m.A_imag.double())
        C = torch.view_as_complex(m.C.double().contiguous())
        dA, dB = torch.exp(A * dt[:, None]), (torch.exp(A * dt[:, None]) - 1) / A
        vander = dA[..., None] ** torch.arange(L, dtype=torch.float64)  # (H, N/2, L)
        K = 2 * torch.einsum("hn,hnl->hl", C * dB, vander).real
        assert (m.kernel(L).double() - K).abs().max() < 1e-5


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_conv_mode_equals_recurrent_mode(init):
    m = make(init)
    x = torch.randn(2, 300, 8)
    with torch.no_grad():
        y, s = m(x)
        y_ref, s_ref = s4d_reference(m, x)
        st, ys = m.init_state(2), []
        for t in range(x.shape[1]):
            yt, st = m.step(x[:, t], st)
            ys.append(yt)
    assert (y.double() - y_ref).abs().max() < 1e-4
    assert (torch.stack(ys, 1) - y).abs().max() < 1e-4
    assert (torch.view_as_complex(s["ssm"].contiguous()).to(torch.complex128) - s_ref).abs().max() < 1e-4
    assert (st["ssm"] - s["ssm"]).abs().max() < 1e-4


def test_chunked_with_state_and_padding():
    m = make()
    x = torch.randn(2, 90, 8)
    with torch.no_grad():
        y, s = m(x)
        a, sa = m(x[:, :31])
        b, sb = m(x[:, 31:], sa)
        torch.testing.assert_close(torch.cat([a, b], 1), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sb["ssm"], s["ssm"], atol=1e-5, rtol=1e-5)
        mask = torch.ones(2, 59, dtype=torch.bool)
        mask[1, 40:] = False
        yp, sp = m(x[:, 31:], sa, mask=mask)
        yu, su = m(x[1:, 31:71], {"ssm": sa["ssm"][1:]})
        torch.testing.assert_close(yp[1, :40], yu[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sp["ssm"][1], su["ssm"][0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    m = make()
    y, _ = m(torch.randn(1, 20, 8))
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_step_cache_matches_reference_and_follows_parameter_updates():
    """The cached-discretisation step equals the float64 recurrence, is refreshed after an
    in-place parameter update, and with autograd still sends gradients to the parameters."""
    torch.manual_seed(0)
    m = S4D(8, d_state=8)
    x = torch.randn(2, 5, 8)
    for _ in range(2):
        with torch.no_grad():
            st, ys = m.init_state(2), []
            for t in range(5):
                y, st = m.step(x[:, t], st)
                ys.append(y)
        ref, xs = s4d_reference(m, x)
        torch.testing.assert_close(torch.stack(ys, 1).double(), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.view_as_complex(st["ssm"].contiguous()).to(torch.complex128), xs,
                                   atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            m.log_dt.add_(0.3)  # the next round must see the new dt, not the cached one
            m.C.mul_(-1.5)
    y, _ = m.step(x[:, 0], m.init_state(2))
    y.sum().backward()
    assert m.log_dt.grad is not None and m.C.grad is not None and float(m.C.grad.abs().sum()) > 0


def test_step_compiled_equals_torch_fallback(monkeypatch):
    """The compiled s4d_step (GELU fused) and the pure-PyTorch step give the same outputs/states."""
    from longstream.backbones.ops import cpu_kernels

    if not cpu_kernels.has_op("s4d_step"):
        pytest.skip("compiled CPU kernels unavailable")
    torch.manual_seed(0)
    m = S4D(16, d_state=8).eval()
    x = torch.randn(3, 4, 16)
    outs = []
    for use in (True, False):
        monkeypatch.setitem(cpu_kernels._STATE, "op:s4d_step", use)
        st, ys = m.init_state(3), []
        with torch.no_grad():
            for t in range(4):
                y, st = m.step(x[:, t], st)
                ys.append(y)
        outs.append((torch.stack(ys, 1), st["ssm"]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-4)
