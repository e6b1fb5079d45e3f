"""The CPU training paths behind Mamba-2: the chunk-state recurrence of the SSD scan and the
causal conv with its hand-written backward, checked by float64 gradcheck and against the
float64 references (strong decays included: the clamped decay exponents must not change results)."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones.mamba2 import _GatedRMSNormFn
from longstream.backbones.ops import cpu_kernels
from longstream.backbones.ops import ssd as ssd_mod
from longstream.backbones.ops.causal_conv import _ConvFn, causal_conv1d, causal_conv1d_ref
from longstream.backbones.ops.ssd import _ChunkScan, _ssd_block, _SSDBlockFn, ssd_scan, ssd_scan_ref


def close(a, b, atol=2e-5, rtol=1e-4, msg=""):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=msg)


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("l", [2, 9])
def test_conv_backward_gradcheck(silu, l):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    args = (r(1, l, 5), r(5, 4), r(5), r(1, 3, 5))
    assert torch.autograd.gradcheck(lambda x, w, b, p: _ConvFn.apply(x, w, b, p, silu), args)
    args = (r(2, l, 5), r(5, 4), r(5), r(2, 3, 5))
    assert torch.autograd.gradcheck(lambda x, w, b, p: _ConvFn.apply(x, w, b, p, silu), args)


@pytest.mark.parametrize("batch", [1, 2])
def test_conv_training_path_matches_reference(batch):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 300, 16, generator=g)  # e % 8 == 0: the compiled forward, if built, is used
    w, b, cache = torch.randn(16, 4, generator=g), torch.randn(16, generator=g), torch.randn(batch, 16, 3, generator=g)
    fast = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.double().clone().requires_grad_() for t in (x, w, b)]
    y, c = causal_conv1d(*fast, cache, "silu")
    yr, cr = causal_conv1d_ref(*ref, cache.double(), "silu")
    close(y, yr)
    close(c, cr)
    gy = torch.randn(y.shape, generator=g)
    (y * gy).sum().backward()
    (yr * gy.double()).sum().backward()
    for name, f, r_ in zip("xwb", fast, ref):
        close(f.grad, r_.grad, atol=1e-4, rtol=1e-4, msg=f"grad of {name}")


def test_chunk_scan_gradcheck():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(2, 5, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.rand(2, 5, 3, 1, 1, generator=g, dtype=torch.float64).requires_grad_()
    s0 = torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChunkScan.apply, (S, d, s0))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_ssd_many_blocks_and_strong_decay(scale, compiled, monkeypatch):
    """Several blocks, padding, groups of several heads; scale 30 drives chunk decays far below
    exp(-60), where the exponents are clamped (results must still equal the reference)."""
    if compiled and not cpu_kernels.has_op("ssd_fwd"):
        pytest.skip("compiled CPU kernels not built")
    monkeypatch.setattr(ssd_mod, "_COMPILED", compiled)
    g = torch.Generator().manual_seed(4)
    b, l, h, p, gr, n = 2, 37, 4, 3, 2, 5
    r = lambda *s: torch.randn(*s, generator=g)
    kw = dict(x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, generator=g) * 2 * scale, B=r(b, l, gr, n),
              C=r(b, l, gr, n), D=r(h), dt_bias=r(h) * 0.1, initial_state=r(b, h, p, n))
    y_ref, s_ref = ssd_scan_ref(**kw, dt_softplus=True)
    y, s = ssd_scan(**kw, chunk_size=4, dt_softplus=True, block_chunks=2)
    close(y, y_ref)
    close(s, s_ref)
    assert torch.isfinite(y).all()


def test_gated_rmsnorm_backward_gradcheck():
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, z, w: _GatedRMSNormFn.apply(x, z, w, 3, 1e-5), (r(7, 6), r(7, 6), r(6)))


def _block_args(g, b, c, T, h, p, gr, n, D_shape):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(b, c * T, h, generator=g, dtype=torch.float64) * 0.5 + 0.1).requires_grad_()
    A = (-torch.rand(h, generator=g, dtype=torch.float64) * 2 - 0.2).requires_grad_()
    D = None if D_shape is None else r(*D_shape)
    return (r(b, c * T, h, p), dt, A, r(b, c * T, gr, n), r(b, c * T, gr, n), D, r(b, h, p, n))


@pytest.mark.parametrize("D_shape", [(4, 1), (4, 3), None])
def test_ssd_block_backward_gradcheck(D_shape):
    """The hand-written backward of one SSD block (x, dt, A, B, C, D, entering state)."""
    g = torch.Generator().manual_seed(5)
    args = _block_args(g, 2, 3, 4, 4, 3, 2, 5, D_shape)
    assert torch.autograd.gradcheck(lambda *a: _SSDBlockFn.apply(*a, 4), args)


def test_ssd_block_backward_matches_autograd():
    """Same gradients as autograd through the expression of the block (one group of 4 heads)."""
    g = torch.Generator().manual_seed(6)
    args = _block_args(g, 1, 3, 8, 4, 2, 1, 6, (4, 1))
    y1, s1 = _SSDBlockFn.apply(*args, 8)
    y2, s2 = _ssd_block(*args, 8)
    close(y1, y2, atol=1e-12, rtol=1e-12)
    wy, ws = torch.randn(y1.shape, generator=g, dtype=torch.float64), torch.randn(s1.shape, generator=g, dtype=torch.float64)
    g1 = torch.autograd.grad((y1 * wy).sum() + (s1 * ws).sum(), args)
    g2 = torch.autograd.grad((y2 * wy).sum() + (s2 * ws).sum(), args)
    for name, a, b_ in zip(["x", "dt", "A", "B", "C", "D", "state"], g1, g2):
        close(a, b_, atol=1e-10, rtol=1e-10, msg=f"grad of {name}")


@pytest.mark.parametrize("path", ["compiled", "handwritten", "autograd"])
def test_ssd_training_path_matches_reference(path, monkeypatch):
    """Gradients of the whole scan (several blocks, padding, strong decays) against the float64 reference."""
    if path == "compiled" and not cpu_kernels.has_op("ssd_fwd"):
        pytest.skip("compiled CPU kernels not built")
    monkeypatch.setattr(ssd_mod, "_COMPILED", path == "compiled")
    monkeypatch.setattr(ssd_mod, "_HANDWRITTEN_BACKWARD", path != "autograd")
    g = torch.Generator().manual_seed(7)
    b, l, h, p, gr, n = 2, 37, 4, 3, 2, 5
    base = dict(x=torch.randn(b, l, h, p, generator=g), dt=torch.randn(b, l, h, generator=g),
                A=-torch.rand(h, generator=g) * 4, B=torch.randn(b, l, gr, n, generator=g),
                C=torch.randn(b, l, gr, n, generator=g), D=torch.randn(h, generator=g),
                dt_bias=torch.randn(h, generator=g) * 0.1, initial_state=torch.randn(b, h, p, n, generator=g))
    fast = {k: v.clone().requires_grad_() for k, v in base.items()}
    ref = {k: v.double().clone().requires_grad_() for k, v in base.items()}
    y, s = ssd_scan(**fast, chunk_size=4, dt_softplus=True, block_chunks=2)
    yr, sr = ssd_scan_ref(**ref, dt_softplus=True)
    close(y, yr)
    wy, ws = torch.randn(y.shape, generator=g), torch.randn(s.shape, generator=g)
    ((y * wy).sum() + (s * ws).sum()).backward()
    ((yr * wy.double()).sum() + (sr * ws.double()).sum()).backward()
    for k in base:
        close(fast[k].grad, ref[k].grad, atol=1e-4, rtol=1e-4, msg=f"grad of {k}")


def test_ssd_whole_scan_backward_gradcheck():
    """The whole-sequence node (three blocks of two chunks, the state threaded through them)."""
    g = torch.Generator().manual_seed(8)
    args = _block_args(g, 2, 6, 2, 4, 2, 2, 3, (4, 1))
    assert torch.autograd.gradcheck(lambda *a: ssd_mod._SSDScanFn.apply(*a, 2, 4), args)


needs_ssd_kernel = pytest.mark.skipif(not cpu_kernels.has_op("ssd_fwd"), reason="compiled CPU kernels not built")


@needs_ssd_kernel
@pytest.mark.parametrize("D_shape", [(4, 1), (4, 3), None])
@pytest.mark.parametrize("K", [1, 2, 16])
def test_compiled_ssd_matches_float64_reference(D_shape, K):
    """csrc/ssd_cpu.cpp, forward and backward (every input, D per head or per channel or absent,
    states saved every K chunks and recomputed in between), against autograd through the float64
    sequential reference; the scale-30 decays reach the clamped exponents."""
    g = torch.Generator().manual_seed(9)
    b, l, h, p, gr, n, T = 2, 24, 4, 3, 2, 5, 4
    for scale in (1.0, 30.0):
        r = lambda *s: torch.randn(*s, generator=g)
        x, dt = r(b, l, h, p), torch.rand(b, l, h, generator=g) * 0.5
        A = -torch.rand(h, generator=g) * 2 * scale
        B, C, st = r(b, l, gr, n), r(b, l, gr, n), r(b, h, p, n)
        D = None if D_shape is None else r(*D_shape)
        base = (x, dt, A, B, C, D, st)
        ins = [None if t is None else t.clone().requires_grad_() for t in base]
        ref = [None if t is None else t.double().requires_grad_() for t in base]
        y, s = ssd_mod._SSDCppFn.apply(*ins, T, K)
        yr, sr = ssd_scan_ref(*ref[:6], initial_state=ref[6])
        close(y, yr)
        close(s, sr)
        wy, ws = torch.randn(y.shape, generator=g), torch.randn(s.shape, generator=g)
        ((y * wy).sum() + (s * ws).sum()).backward()
        ((yr * wy.double()).sum() + (sr * ws.double()).sum()).backward()
        for name, a, b_ in zip(["x", "dt", "A", "B", "C", "D", "state"], ins, ref):
            if a is not None:
                close(a.grad, b_.grad, atol=1e-4, rtol=1e-4, msg=f"grad of {name} (scale {scale})")


@needs_ssd_kernel
@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("K", [1, 3])
def test_compiled_ssd_head_split_matches_float64_reference(threads, K, restore_threads):
    """Batch 1 with one group is a single (batch, group) item, so with several threads the kernel
    cuts it by heads (2, 4 and 4 parts of the 4 heads here; the later parts' gB / gC shares are summed
    at the end): forward and every gradient against the float64 reference, and against 1 thread."""
    g = torch.Generator().manual_seed(11)
    b, l, h, p, gr, n, T = 1, 40, 4, 3, 1, 5, 4
    r = lambda *s: torch.randn(*s, generator=g)
    base = (r(b, l, h, p), torch.rand(b, l, h, generator=g) * 0.5, -torch.rand(h, generator=g) * 2,
            r(b, l, gr, n), r(b, l, gr, n), r(h, p), r(b, h, p, n))
    wy, ws = r(b, l, h, p), r(b, h, p, n)
    ref = [t.double().requires_grad_() for t in base]
    yr, sr = ssd_scan_ref(*ref[:6], initial_state=ref[6])
    ((yr * wy.double()).sum() + (sr * ws.double()).sum()).backward()
    outs = []
    for nt in (1, threads):
        torch.set_num_threads(nt)
        ins = [t.clone().requires_grad_() for t in base]
        y, s = ssd_mod._SSDCppFn.apply(*ins, T, K)
        ((y * wy).sum() + (s * ws).sum()).backward()
        outs.append([y.detach(), s.detach()] + [t.grad for t in ins])
    names = ["y", "state", "x", "dt", "A", "B", "C", "D", "entering state"]
    for name, one, many, want in zip(names, outs[0], outs[1], [yr, sr] + [t.grad for t in ref]):
        close(many, want, atol=1e-4, rtol=1e-4, msg=f"{name} at {threads} threads")
        close(many, one, atol=1e-5, rtol=1e-5, msg=f"{name}: {threads} threads vs 1")


@needs_ssd_kernel
def test_compiled_ssd_inference_equals_pytorch_path(monkeypatch):
    """Without autograd the compiled scan and the PyTorch scan agree at Mamba-2's CPU shapes."""
    g = torch.Generator().manual_seed(10)
    b, l, h, p, gr, n = 1, 200, 4, 16, 1, 32
    r = lambda *s: torch.randn(*s, generator=g)
    kw = dict(x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, generator=g) * 4, B=r(b, l, gr, n), C=r(b, l, gr, n),
              D=r(h), dt_bias=r(h) * 0.1, initial_state=r(b, h, p, n), dt_softplus=True, chunk_size=64)
    with torch.no_grad():
        y1, s1 = ssd_scan(**kw)
        monkeypatch.setattr(ssd_mod, "_COMPILED", False)
        y2, s2 = ssd_scan(**kw)
    close(y1, y2, atol=1e-4, rtol=1e-4)
    close(s1, s2, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cpu_kernels.has_op("gated_rmsnorm_fwd"), reason="compiled CPU kernels not built")
def test_compiled_gated_rmsnorm_matches_float64():
    """csrc/gated_norm_cpu.cpp (a gate z read as a strided slice, two groups, a tail past the last
    8 lanes) in the no-grad path and as the forward of the training path, gradients included."""
    from longstream.backbones.mamba2 import GatedRMSNorm

    g = torch.Generator().manual_seed(11)
    N, d, gs = 9, 20, 10
    x, z = torch.randn(N, d, generator=g), torch.randn(N, 2 * d, generator=g)[:, 3 : 3 + d]
    norm = GatedRMSNorm(d, group_size=gs)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d, generator=g))
    xd, zd = x.double().requires_grad_(), z.double().requires_grad_()
    u = (xd * torch.nn.functional.silu(zd)).unflatten(-1, (-1, gs))
    ref = (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + norm.eps)).flatten(-2) * norm.weight.double()
    with torch.no_grad():
        close(norm(x, z), ref)
    xf, zf = x.clone().requires_grad_(), z.clone().requires_grad_()
    y = norm(xf, zf)
    close(y, ref)
    gy = torch.randn(N, d, generator=g)
    (y * gy).sum().backward()
    (ref * gy.double()).sum().backward()
    close(xf.grad, xd.grad, atol=1e-4)
    close(zf.grad, zd.grad, atol=1e-4)
