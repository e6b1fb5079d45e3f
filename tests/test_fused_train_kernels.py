"""Training paths of the compiled CPU kernels (scan_bwd_fused, conv_fwd_train, conv_bwd): values
and gradients equal the float64 references' (through autograd) and the pure-PyTorch paths'."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones.ops import cpu_kernels
from longstream.backbones.ops.causal_conv import causal_conv1d, causal_conv1d_ref
from longstream.backbones.ops.selective_scan import selective_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="compiled CPU kernels not built")


def _grads(fn, inputs, dtype):
    xs = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in inputs]
    outs = fn(*xs)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach().double() for o in outs] + [None if t is None else t.grad.double() for t in xs]


@pytest.mark.parametrize(
    "b,l,e,n,chunk,use_d,use_z,use_bias,softplus,use_h0",
    [
        (2, 37, 16, 4, 8, True, True, True, True, True),
        (1, 130, 40, 16, 64, False, False, False, False, False),
        (2, 64, 24, 8, 16, True, False, True, False, True),
        (1, 5, 8, 3, 64, False, True, False, True, False),
        (1, 200, 64, 16, 64, True, True, True, True, False),
    ],
)
def test_fused_scan_matches_reference(b, l, e, n, chunk, use_d, use_z, use_bias, softplus, use_h0):
    torch.manual_seed(0)
    u, dt = torch.randn(b, l, e), torch.randn(b, l, e) * 0.5 - 1
    if not softplus:
        dt = dt.abs() * 0.3
    A, B, C = -torch.rand(e, n) * 2 - 0.1, torch.randn(b, l, n), torch.randn(b, l, n)
    D = torch.randn(e) if use_d else None
    z = torch.randn(b, l, e) if use_z else None
    bias = torch.randn(e) * 0.3 if use_bias else None
    h0 = torch.randn(b, e, n) if use_h0 else None
    ins = [u, dt, A, B, C, D, z, bias, h0]
    fast = _grads(lambda *t: selective_scan(*t[:8], softplus, t[8], chunk_size=chunk, backend="cpp"), ins, torch.float32)
    ref = _grads(lambda *t: selective_scan_ref(*t[:8], softplus, t[8]), ins, torch.float64)
    torch_path = _grads(
        lambda *t: selective_scan(*t[:8], softplus, t[8], chunk_size=chunk, backend="torch"), ins, torch.float32
    )
    for i, (p, q, r) in enumerate(zip(fast, ref, torch_path)):
        if q is None:
            continue
        scale = q.abs().max().item() + 1e-6
        assert (p - q).abs().max().item() / scale < 1e-4, i
        assert (p - r).abs().max().item() / scale < 1e-4, i


@pytest.mark.parametrize("b,l,e,k,silu,use_cache", [(2, 300, 16, 4, True, True), (1, 3, 8, 4, True, True),
                                                     (1, 700, 24, 3, False, False), (2, 2, 8, 4, False, True)])
def test_conv_train_kernels_match_reference(b, l, e, k, silu, use_cache):
    torch.manual_seed(0)
    x, w, bias = torch.randn(b, l, e), torch.randn(e, k), torch.randn(e)
    cache = torch.randn(b, e, k - 1) if use_cache else None
    act = "silu" if silu else None
    fast = _grads(lambda *t: causal_conv1d(t[0], t[1], t[2], t[3], act)[:1], [x, w, bias, cache], torch.float32)
    ref = _grads(lambda *t: causal_conv1d_ref(t[0], t[1], t[2], t[3], act)[:1], [x, w, bias, cache], torch.float64)
    for i, (p, q) in enumerate(zip(fast, ref)):
        if q is None:
            continue
        assert (p - q).abs().max().item() / (q.abs().max().item() + 1e-6) < 1e-5, i
