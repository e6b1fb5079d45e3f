"""Kernels of ``longstream.backbones.ops`` against their float64 sequential references.

Selective scan (C++ kernel and pure-PyTorch path), causal conv (cache, step, C++), SSD:
values, final states, gradients, chunked-with-state == whole, odd sizes, extreme decays.
"""

from __future__ import annotations

import pytest
import torch

from longstream.backbones.ops import cpu_kernels
from longstream.backbones.ops.causal_conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from longstream.backbones.ops.selective_scan import selective_scan, selective_scan_ref
from longstream.backbones.ops.ssd import ssd_scan, ssd_scan_ref

torch.set_num_threads(1)

SCAN_BACKENDS = ["torch"] + (["cpp"] if cpu_kernels.available() else [])


def close(a, b, atol=2e-5, rtol=1e-4, msg=""):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def scan_inputs(b=2, l=23, e=12, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(
        u=r(b, l, e), dt=r(b, l, e) * 0.5, A=-torch.rand(e, n, generator=g) * 3, B=r(b, l, n), C=r(b, l, n),
        D=r(e), z=r(b, l, e), dt_bias=r(e) * 0.1, initial_state=r(b, e, n),
    )


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize("e,chunk", [(12, 8), (16, 64), (3, 5)])
def test_selective_scan_matches_reference(backend, e, chunk):
    kw = scan_inputs(e=e)
    y_ref, h_ref = selective_scan_ref(**kw, dt_softplus=True)
    y, h = selective_scan(**kw, dt_softplus=True, chunk_size=chunk, backend=backend)
    assert h.dtype == torch.float32 and h.shape == h_ref.shape
    close(y, y_ref, msg=f"{backend} output")
    close(h, h_ref, msg=f"{backend} final state")


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
def test_selective_scan_gradients_match_reference(backend):
    kw = scan_inputs(l=19, e=10, n=4)
    names = list(kw)
    fast = {k: v.clone().requires_grad_() for k, v in kw.items()}
    ref = {k: v.double().clone().requires_grad_() for k, v in kw.items()}
    y, h = selective_scan(**fast, dt_softplus=True, chunk_size=6, backend=backend)
    y2, h2 = selective_scan_ref(**ref, dt_softplus=True)
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    ((y * gy).sum() + (h * gh).sum()).backward()
    ((y2 * gy.double()).sum() + (h2 * gh.double()).sum()).backward()
    for k in names:
        close(fast[k].grad, ref[k].grad, atol=1e-4, rtol=1e-3, msg=f"{backend} grad of {k}")


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
def test_selective_scan_chunked_with_state_equals_full(backend):
    kw = scan_inputs(l=30, e=8)
    y, h = selective_scan(**kw, dt_softplus=True, backend=backend)
    st, ys = kw["initial_state"], []
    for a, b in [(0, 1), (1, 11), (11, 30)]:
        part = {k: (v[:, a:b] if k in ("u", "dt", "B", "C", "z") else v) for k, v in kw.items()}
        part["initial_state"] = st
        yp, st = selective_scan(**part, dt_softplus=True, chunk_size=4, backend=backend)
        ys.append(yp)
    close(torch.cat(ys, 1), y)
    close(st, h)


def test_selective_scan_extreme_decay_is_finite():
    """Large dt * |A| underflows exp(); the clamp keeps it finite and equal to the reference."""
    kw = scan_inputs(l=16, e=8)
    kw["dt"] = kw["dt"].abs() * 200
    kw["A"] = kw["A"] * 10
    y_ref, h_ref = selective_scan_ref(**kw)
    for backend in SCAN_BACKENDS:
        y, h = selective_scan(**kw, backend=backend)
        assert torch.isfinite(y).all()
        close(y, y_ref, atol=1e-3, rtol=1e-4, msg=backend)


@pytest.mark.skipif(not cpu_kernels.available(), reason="compiled CPU kernels not built")
def test_cpp_kernel_thread_count_invariant():
    kw = scan_inputs(b=3, l=40, e=72)
    outs = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        outs.append(selective_scan(**kw, dt_softplus=True, backend="cpp"))
    torch.set_num_threads(1)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ---------------------------------------------------------------------------- causal conv
CONV_BACKENDS = ["torch"] + (["cpp"] if cpu_kernels.available() else [])


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("l", [1, 2, 17])
def test_causal_conv_matches_reference_and_streams(backend, l):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, l, 16, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, generator=g)
    cache = torch.randn(2, 16, 3, generator=g)
    y_ref, c_ref = causal_conv1d_ref(x, w, b, cache, "silu")
    y, c = causal_conv1d(x, w, b, cache, "silu", backend=backend)
    close(y, y_ref)
    close(c, c_ref, atol=0, rtol=0)
    cc, ys = cache, []
    for t in range(l):
        yt, cc = causal_conv1d_update(x[:, t], cc, w, b, "silu")
        ys.append(yt)
    close(torch.stack(ys, 1), y_ref)
    close(cc, c_ref, atol=0, rtol=0)


def test_causal_conv_lengths_cache():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(3, 9, 8, generator=g), torch.randn(8, 4, generator=g)
    lengths = torch.tensor([9, 5, 2])
    _, c = causal_conv1d(x, w, None, None, None, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        _, ci = causal_conv1d(x[i : i + 1, :n], w, None, None, None)
        close(c[i : i + 1], ci, atol=0, rtol=0)


def test_causal_conv_gradient():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: causal_conv1d(x, w, None, None, "silu")[0], (x, w))


# ---------------------------------------------------------------------------- SSD
def ssd_inputs(b=2, l=21, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    return dict(
        x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, generator=gen) * 2, B=r(b, l, g, n), C=r(b, l, g, n),
        D=r(h), dt_bias=r(h) * 0.1, initial_state=r(b, h, p, n),
    )


@pytest.mark.parametrize("chunk,block", [(4, 2), (8, 16), (64, 1)])
def test_ssd_matches_reference(chunk, block):
    kw = ssd_inputs()
    y_ref, s_ref = ssd_scan_ref(**kw, dt_softplus=True)
    y, s = ssd_scan(**kw, chunk_size=chunk, dt_softplus=True, block_chunks=block)
    close(y, y_ref)
    close(s, s_ref)


def test_ssd_chunked_with_state_and_gradients():
    kw = ssd_inputs(l=13)
    seq = ("x", "dt", "B", "C")
    y, s = ssd_scan(**kw, chunk_size=4, dt_softplus=True)
    p1 = {k: (v[:, :6] if k in seq else v) for k, v in kw.items()}
    y1, s1 = ssd_scan(**p1, chunk_size=4, dt_softplus=True)
    p2 = {k: (v[:, 6:] if k in seq else v) for k, v in kw.items()}
    p2["initial_state"] = s1
    y2, s2 = ssd_scan(**p2, chunk_size=4, dt_softplus=True)
    close(torch.cat([y1, y2], 1), y)
    close(s2, s)
    fast = {k: v.clone().requires_grad_() for k, v in kw.items()}
    ref = {k: v.double().clone().requires_grad_() for k, v in kw.items()}
    yf, sf = ssd_scan(**fast, chunk_size=4, dt_softplus=True)
    yr, sr = ssd_scan_ref(**ref, dt_softplus=True)
    gy, gs = torch.randn_like(yf), torch.randn_like(sf)
    ((yf * gy).sum() + (sf * gs).sum()).backward()
    ((yr * gy.double()).sum() + (sr * gs.double()).sum()).backward()
    for k in kw:
        close(fast[k].grad, ref[k].grad, atol=1e-4, rtol=1e-3, msg=f"grad of {k}")


def test_shape_errors_are_clear():
    kw = scan_inputs()
    with pytest.raises(ValueError, match="selective_scan expects"):
        selective_scan(kw["u"][0], kw["dt"], kw["A"], kw["B"], kw["C"])
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(kw["u"], kw["dt"], kw["A"], kw["B"], kw["C"], backend="nope")


@pytest.mark.skipif(not cpu_kernels.available(), reason="compiled CPU kernels not built")
def test_fused_inference_kernel_equals_training_path():
    """No grad: softplus, D and the gate run inside the kernel; with grad they run in PyTorch."""
    kw = scan_inputs(e=16, l=33)
    kw["dt"] = kw["dt"] * 20  # softplus over a wide range, both branches
    with torch.no_grad():
        y_fused, h_fused = selective_scan(**kw, dt_softplus=True, backend="cpp")
    u = kw["u"].clone().requires_grad_()
    y, h = selective_scan(**{**kw, "u": u}, dt_softplus=True, backend="cpp")
    close(y_fused, y.detach(), atol=1e-5, rtol=1e-5)
    close(h_fused, h.detach(), atol=1e-5, rtol=1e-5)


def test_cuda_dispatch_is_lazy_and_optional():
    """Without mamba_ssm / causal_conv1d (or without CUDA) every has_* is False and CPU ops never touch them."""
    import sys

    from longstream.backbones.ops import cuda

    if not torch.cuda.is_available():
        assert not (cuda.has_selective_scan() or cuda.has_causal_conv1d() or cuda.has_ssd())
    assert "mamba_ssm" not in sys.modules or sys.modules["mamba_ssm"] is None or torch.cuda.is_available()
