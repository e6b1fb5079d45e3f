"""RMSNorm's compiled row kernels (float32 CPU, forward and backward) against the float64 composite."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones import RMSNorm
from longstream.backbones.ops import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.has_op("gated_rmsnorm_bwd"), reason="compiled CPU kernels not built")


def _ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xd = x.double()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("d", [8, 13, 100, 256, 1024])
def test_forward_backward_match_float64(d: int) -> None:
    torch.manual_seed(d)
    n = RMSNorm(d)
    with torch.no_grad():
        n.weight.copy_(torch.randn(d))
    x = (torch.randn(3, 41, d) * 3).requires_grad_()
    g = torch.randn(3, 41, d)
    y = n(x)
    assert "RMSNormFn" in type(y.grad_fn.next_functions[0][0]).__name__  # the compiled path ran (under a view)
    y.backward(g)
    xd = x.detach().double().requires_grad_()
    wd = n.weight.detach().double().requires_grad_()
    yd = _ref(xd, wd, n.eps)
    yd.backward(g.double())
    torch.testing.assert_close(y.double(), yd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(n.weight.grad.double(), wd.grad, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        yi = n(x)
    torch.testing.assert_close(yi.double(), yd, rtol=1e-5, atol=1e-5)


def test_strided_and_weight_only_gradient() -> None:
    torch.manual_seed(0)
    n = RMSNorm(64)
    xt = torch.randn(64, 50).t()  # (50, 64) with a non-unit last stride
    torch.testing.assert_close(n(xt).double(), _ref(xt, n.weight, n.eps), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 9, 64)  # no input gradient wanted: only the weight's
    n(x).pow(2).sum().backward()
    wd = n.weight.detach().double().requires_grad_()
    _ref(x, wd, n.eps).pow(2).sum().backward()
    torch.testing.assert_close(n.weight.grad.double(), wd.grad, rtol=1e-5, atol=1e-4)


def test_double_backward_is_refused() -> None:
    n = RMSNorm(16)
    x = torch.randn(4, 16, requires_grad=True)
    (gx,) = torch.autograd.grad(n(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
