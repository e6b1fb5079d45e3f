"""Pooled big buffers (``ops/bigbuf.py``, ``empty_big`` in the C++ kernels) and the Bidirectional
wrapper's fused reversals: same values and gradients as the plain paths; blocks really reused."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from longstream.backbones import Bidirectional
from longstream.backbones.mamba import Mamba
from longstream.backbones.ops import bigbuf, cpu_kernels
from longstream.backbones.ops.selective_scan import selective_scan

torch.set_num_threads(1)


@pytest.fixture(params=["mkl", "onednn"])
def always_big(monkeypatch, request):
    """Route every call through the pooled path (the tiny test shapes are below MIN_BYTES), once
    with each GEMM library (LONGSTREAM_GEMM)."""
    monkeypatch.setattr(bigbuf, "MIN_BYTES", 0)
    if request.param == "onednn" and not (cpu_kernels.has_op("gemm_available") and cpu_kernels.ops().gemm_available()):
        pytest.skip("this PyTorch build has no oneDNN matmul")
    monkeypatch.setenv("LONGSTREAM_GEMM", request.param)
    assert bigbuf.gemm_backend() == request.param


@pytest.mark.parametrize("backend", ["mkl", "onednn"])
def test_gemm_into_matches_torch_mm(monkeypatch, backend):
    """out = beta * out + a @ b with plain, transposed and sliced operands, beta 0 and 1, through
    both libraries; a zero inner dimension and the auto choice (oneDNN on AMD, MKL elsewhere)."""
    if backend == "onednn" and not (cpu_kernels.has_op("gemm_available") and cpu_kernels.ops().gemm_available()):
        pytest.skip("this PyTorch build has no oneDNN matmul")
    monkeypatch.setenv("LONGSTREAM_GEMM", backend)
    assert bigbuf.gemm_backend() == backend
    g = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 1, 1), (5, 3, 7), (300, 257, 65), (2000, 16, 48)):
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        ref = (a.double() @ b.double())
        for aa, bb in ((a, b), (a.t().contiguous().t(), b.t().contiguous().t()), (torch.randn(m, k + 3, generator=g)[:, 1 : k + 1], b)):
            r = aa.double() @ bb.double()
            out = torch.full((m, n), float("nan"))
            bigbuf.gemm(aa, bb, out)  # beta 0: the old contents (NaN) must not leak in
            torch.testing.assert_close(out.double(), r, atol=1e-4 * k ** 0.5, rtol=1e-5)
            base = torch.randn(m, n, generator=g)
            out = base.clone()
            bigbuf.gemm(aa, bb, out, beta=1.0)
            torch.testing.assert_close(out.double(), base.double() + r, atol=1e-4 * k ** 0.5, rtol=1e-5)
        assert ref.abs().max() > 0.1  # real products, not zeros
    out = torch.ones(4, 3)
    bigbuf.gemm(torch.empty(4, 0), torch.empty(0, 3), out)
    assert torch.equal(out, torch.zeros(4, 3))
    monkeypatch.setenv("LONGSTREAM_GEMM", "auto")
    amd = "AuthenticAMD" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    expected = "onednn" if amd and bigbuf._gemm_ok()[0] else "mkl"
    assert bigbuf.gemm_backend() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("oi", [(7, 12), (64, 4), (48, 8), (96, 16)])  # the last three: skinny gradient GEMMs
def test_linear_matches_f_linear_values_and_grads(always_big, dtype, bias, oi):
    o, i = oi
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 9, i, generator=g, dtype=dtype)
    w0, b0 = torch.randn(o, i, generator=g, dtype=dtype), torch.randn(o, generator=g, dtype=dtype)
    dy = torch.randn(2, 9, o, generator=g, dtype=dtype)
    outs = []
    for fn in (bigbuf.linear, F.linear):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        y = fn(x[:, 1:, :], w, b if bias else None)  # a non-contiguous input view
        (y * dy[:, 1:]).sum().backward()
        outs.append([y.detach(), x.grad, w.grad, b.grad if bias else torch.zeros(1, dtype=dtype)])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for i, (p, q) in enumerate(zip(*outs)):
        assert (p - q).abs().max().item() <= tol * (1 + q.abs().max().item()), i
    assert outs[0][0].shape == (2, 8, o)
    assert all(t.is_contiguous() for t in outs[0][1:3])  # the transposed skinny products come back contiguous


@pytest.mark.parametrize("oi", [(128, 4), (512, 16), (36, 128), (8, 8), (3, 2)])
def test_gradient_gemms_match_plain_products(oi):
    """The weight / input gradient GEMMs of the pooled linear (transposed where the product is
    skinny) equal g^T x and g W."""
    o, i = oi
    gen = torch.Generator().manual_seed(1)
    g2, x2, w = (torch.randn(*s, generator=gen) for s in ((3000, o), (3000, i), (o, i)))
    torch.testing.assert_close(bigbuf._wgrad(g2, x2, w), g2.t() @ x2, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bigbuf._dgrad(g2, w), g2 @ w, rtol=1e-4, atol=1e-4)


def test_mamba_on_the_pooled_path_matches_reference(always_big):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 11, 16, dtype=torch.float32, requires_grad=True)
    y, st = m(x)
    y_ref, st_ref = m.reference(x)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(st["ssm"].double(), st_ref["ssm"], atol=2e-5, rtol=1e-4)
    y.pow(2).sum().backward()
    g_fast = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    xd = x.detach().double().requires_grad_(True)
    md = Mamba(16, d_state=4).double()
    md.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    yd, _ = md(xd)  # float64: the pure-PyTorch paths
    yd.pow(2).sum().backward()
    g_ref = [xd.grad] + [p.grad for p in md.parameters()]
    for i, (p, q) in enumerate(zip(g_fast, g_ref)):
        assert (p.double() - q).abs().max().item() <= 1e-4 * (1 + q.abs().max().item()), i


needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason="compiled CPU kernels not built")


@needs_kernels
def test_pool_reuses_freed_blocks_and_trims(monkeypatch):
    monkeypatch.delenv("LONGSTREAM_POOL_MB", raising=False)
    bigbuf.trim()
    t = bigbuf.empty(3, 1 << 20)  # 12 MiB float32: pooled
    ptr = t.data_ptr()
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * 3 * (1 << 20)
    del t
    t2 = bigbuf.empty(3, 1 << 20)
    assert t2.data_ptr() == ptr  # the freed block came back
    del t2
    assert bigbuf.trim() >= 12 << 20
    assert bigbuf.trim() == 0
    monkeypatch.setenv("LONGSTREAM_POOL_MB", "0")  # off: freed blocks are released at once
    t3 = bigbuf.empty(3, 1 << 20)
    del t3
    assert bigbuf.trim() == 0
    small = bigbuf.empty(1000)  # below MIN_BYTES: plain torch.empty
    assert small.shape == (1000,) and bigbuf.empty(2, 3, dtype=torch.float64).dtype == torch.float64


@needs_kernels
def test_kernels_with_pooled_outputs_match_torch_path():
    # (1, 2048, 512) float32 = 4 MiB: the outputs of scan_fwd / scan_bwd_fused come from the pool;
    # run twice so the second run gets reused (dirty) blocks
    g = torch.Generator().manual_seed(1)
    b, l, e, n = 1, 2048, 512, 4
    ins = dict(u=torch.randn(b, l, e, generator=g), dt=torch.randn(b, l, e, generator=g) * 0.5 - 1,
               A=-torch.rand(e, n, generator=g) - 0.1, B=torch.randn(b, l, n, generator=g),
               C=torch.randn(b, l, n, generator=g), D=torch.randn(e, generator=g), z=torch.randn(b, l, e, generator=g),
               dt_bias=torch.randn(e, generator=g) * 0.3)
    res = []
    for backend in ("cpp", "cpp", "torch"):
        t = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
        y, _ = selective_scan(**t, dt_softplus=True, backend=backend)
        (y * ins["z"]).sum().backward()
        res.append([y.detach()] + [t[k].grad for k in ("u", "dt", "B", "z")])
    for i, (p, p2, q) in enumerate(zip(*res)):
        assert torch.equal(p, p2), i
        assert (p - q).abs().max().item() <= 1e-4 * (1 + q.abs().max().item()), i


@pytest.mark.parametrize("shared", [False, True])
def test_bidirectional_equals_forward_plus_reversed_reference(shared):
    torch.manual_seed(0)
    bi = Bidirectional.build(Mamba, 16, shared=shared, d_state=4)
    x = torch.randn(2, 13, 16, requires_grad=True)
    y, _ = bi(x)
    bwd = bi.fwd if shared else bi.bwd
    ref = bi.fwd.reference(x)[0] + bwd.reference(x.flip(1))[0].flip(1)  # float64
    torch.testing.assert_close(y.double(), ref, atol=2e-5, rtol=1e-4)
    # gradients equal those of the same composition written with plain flips
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    gx, gp = x.grad.clone(), [p.grad.clone() for p in bi.parameters()]
    x.grad = None
    bi.zero_grad()
    y2 = bi.fwd(x)[0] + bwd(x.flip(1))[0].flip(1)
    (y2 * dy).sum().backward()
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)
    for p, q in zip(gp, (p.grad for p in bi.parameters())):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_bidirectional_padding_still_reverses_within_length():
    torch.manual_seed(0)
    bi = Bidirectional.build(Mamba, 16, d_state=4)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        y, _ = bi(x, mask=mask)
        y1, _ = bi(x[1:, :6])
    torch.testing.assert_close(y[1, :6], y1[0], atol=2e-5, rtol=1e-4)
