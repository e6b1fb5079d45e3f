"""Mamba-2's CPU training paths: the SSD scan reading x, B, C from the packed conv output
(``ssd_scan_packed`` / ``csrc/ssd_cpu.cpp``'s ``ssd_bwd_into``), the compiled gated-RMSNorm
backward, the pooled split input projection (``bigbuf.split_linear``) and the whole layer,
each against float64 references (gradients of every input included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longstream.backbones.mamba2 import GatedRMSNorm, Mamba2
from longstream.backbones.ops import bigbuf, cpu_kernels
from longstream.backbones.ops.ssd import ssd_scan_packed, ssd_scan_ref

needs_kernels = pytest.mark.skipif(not cpu_kernels.has_op("ssd_bwd_into"), reason="compiled CPU kernels not built")


def close(a, b, atol=2e-5, rtol=1e-4, msg=""):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=msg)


@needs_kernels
@pytest.mark.parametrize("D_kind", ["head", "channel", None])
@pytest.mark.parametrize("K", [1, 3])
def test_packed_ssd_matches_float64_reference(D_kind, K):
    """x, B, C as views of one (b, l, h p + 2 g n) tensor, a length that needs padding, groups of two
    heads, an entering state; states saved every K chunks (1: all, nothing recomputed); the
    scale-30 decays reach the clamped exponents. One gradient for the packed tensor."""
    g = torch.Generator().manual_seed(21)
    b, l, h, p, gr, n, T = 2, 37, 4, 3, 2, 5, 4
    for scale in (1.0, 30.0):
        xBC = torch.randn(b, l, h * p + 2 * gr * n, generator=g)
        dt = torch.rand(b, l, h, generator=g) * 0.5
        A = -torch.rand(h, generator=g) * 2 * scale
        D = {"head": torch.randn(h, generator=g), "channel": torch.randn(h, p, generator=g), None: None}[D_kind]
        st = torch.randn(b, h, p, n, generator=g)
        base = [xBC, dt, A, D, st]
        fast = [None if t is None else t.clone().requires_grad_() for t in base]
        ref = [None if t is None else t.double().requires_grad_() for t in base]
        y, s = ssd_scan_packed(fast[0], (h, p), (gr, n), fast[1], fast[2], T, D=fast[3], initial_state=fast[4],
                               block_chunks=K, cpu_chunk=T)
        xr, Br, Cr = torch.split(ref[0], [h * p, gr * n, gr * n], -1)
        yr, sr = ssd_scan_ref(xr.unflatten(-1, (h, p)), ref[1], ref[2], Br.unflatten(-1, (gr, n)),
                              Cr.unflatten(-1, (gr, n)), ref[3], initial_state=ref[4])
        close(y, yr)
        close(s, sr)
        wy, ws = torch.randn(y.shape, generator=g), torch.randn(s.shape, generator=g)
        ((y * wy).sum() + (s * ws).sum()).backward()
        ((yr * wy.double()).sum() + (sr * ws.double()).sum()).backward()
        for name, a, r in zip(["xBC", "dt", "A", "D", "state"], fast, ref):
            if a is not None:
                close(a.grad, r.grad, atol=1e-4, rtol=1e-4, msg=f"grad of {name} (scale {scale}, K {K})")


@needs_kernels
def test_compiled_gated_rmsnorm_backward_matches_float64():
    """Rows wider than one AVX2 register per group plus a tail (gs 44), the gate a strided slice."""
    g = torch.Generator().manual_seed(22)
    N, d, gs = 300, 88, 44
    x, z = torch.randn(N, d, generator=g), torch.randn(N, 2 * d, generator=g)[:, 5 : 5 + d]
    norm = GatedRMSNorm(d, group_size=gs)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=g))
    xf, zf = x.clone().requires_grad_(), z.clone().requires_grad_()
    xd, zd = x.double().requires_grad_(), z.double().requires_grad_()
    wd = norm.weight.detach().double().requires_grad_()
    y = norm(xf, zf)
    u = (xd * F.silu(zd)).unflatten(-1, (-1, gs))
    ref = (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + norm.eps)).flatten(-2) * wd
    close(y, ref)
    gy = torch.randn(N, d, generator=g)
    (y * gy).sum().backward()
    (ref * gy.double()).sum().backward()
    close(xf.grad, xd.grad, atol=1e-4)
    close(zf.grad, zd.grad, atol=1e-4)
    close(norm.weight.grad, wd.grad, atol=1e-3)


def test_split_linear_equals_linear_pieces():
    """Pooled pieces (outputs large enough for the buffer pool), gradients of x, weight and bias,
    one piece without a gradient (it counts as zero)."""
    g = torch.Generator().manual_seed(23)
    m, i, sizes = 2100, 24, (512, 40, 8)
    x = torch.randn(1, m, i, generator=g)
    w, bias = torch.randn(sum(sizes), i, generator=g), torch.randn(sum(sizes), generator=g)
    fast = [t.clone().requires_grad_() for t in (x, w, bias)]
    ref = [t.double().requires_grad_() for t in (x, w, bias)]
    outs = bigbuf.split_linear(*fast, sizes)
    refs = torch.split(F.linear(*ref), list(sizes), -1)
    assert all(o.is_contiguous() for o in outs)
    for o, r in zip(outs, refs):
        close(o, r, atol=1e-4)
    g0, g2 = torch.randn(outs[0].shape, generator=g), torch.randn(outs[2].shape, generator=g)
    ((outs[0] * g0).sum() + (outs[2] * g2).sum()).backward()  # piece 1 gets no gradient
    ((refs[0] * g0.double()).sum() + (refs[2] * g2.double()).sum()).backward()
    for name, a, r in zip(["x", "weight", "bias"], fast, ref):
        close(a.grad, r.grad, atol=1e-3, msg=f"grad of {name}")


@pytest.mark.parametrize("L", [48, 45])
def test_mamba2_layer_training_matches_float64(L):
    """The float32 training step of a Mamba-2 layer (compiled paths where built) against the same
    layer in float64 on the pure-PyTorch paths: output, final state, every parameter's gradient."""
    torch.manual_seed(24)
    m = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=16).train()
    md = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=16, backend="torch").double()
    md.load_state_dict(m.state_dict())
    x = torch.randn(2, L, 32)
    xf, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    y, st = m(xf)
    yd, std = md(xd)
    close(y, yd)
    close(st["ssm"], std["ssm"])
    wy, ws = torch.randn(y.shape), torch.randn(st["ssm"].shape)
    ((y * wy).sum() + (st["ssm"] * ws).sum()).backward()
    ((yd * wy.double()).sum() + (std["ssm"] * ws.double()).sum()).backward()
    close(xf.grad, xd.grad, atol=1e-4)
    for (name, p), pd in zip(m.named_parameters(), md.parameters()):
        close(p.grad, pd.grad, atol=1e-4, rtol=1e-4, msg=f"grad of {name}")
