"""The compiled CPU kernels really use torch's thread count (the extension is built with OpenMP, so
``at::parallel_for`` splits), and their results do not depend on it."""

from __future__ import annotations

import os

import pytest
import torch

from longstream.backbones import RMSNorm
from longstream.backbones.ops import cpu_kernels
from longstream.backbones.registry import list_mixers

pytestmark = pytest.mark.skipif(not cpu_kernels.has_op("kernel_threads"), reason="compiled CPU kernels not built")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPU cores")
def test_parallel_regions_follow_torch_threads(restore_threads):
    if not cpu_kernels.built_with_openmp():
        pytest.skip("this compiler built the kernels without OpenMP (serial fallback)")
    for nt in (1, 2):
        torch.set_num_threads(nt)
        assert cpu_kernels.ops().kernel_threads() == nt


def _run(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Training output, input and parameter gradients, and the no-grad output."""
    module.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    out = module(xx)
    y = out[0] if isinstance(out, tuple) else out
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    with torch.no_grad():
        yi = module(x)
    yi = yi[0] if isinstance(yi, tuple) else yi
    return [y.detach(), yi, xx.grad] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("sym", ["M", "M2", "S", "H", "BM"])
def test_mixers_equal_at_one_and_two_threads(sym, restore_threads):
    """Mamba (scan + conv kernels), Mamba-2 (SSD + gated norm), S4D, Hyena, bidirectional Mamba:
    batch 3 x 517 steps (uneven channel blocks and chunks), forward and every gradient."""
    torch.manual_seed(0)
    m = list_mixers()[sym](64)
    x = torch.randn(3, 517, 64)
    res = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        res.append(_run(m, x))
    for a, b in zip(*res):
        # per-thread partial sums (weight gradients) may add in another order: float32 rounding only
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rmsnorm_equal_at_one_and_two_threads(restore_threads):
    torch.manual_seed(0)
    n = RMSNorm(96)
    with torch.no_grad():
        n.weight.copy_(torch.randn(96))
    x = torch.randn(4, 1000, 96)
    res = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        res.append(_run(n, x))
    for a, b in zip(*res):  # the weight gradient sums 4,000 rows in float32, per thread then across
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
