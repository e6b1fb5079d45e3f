"""Mamba and Mamba-2 mixers: float64 reference, chunked state, step, padding, gradients,
initialisation and parameter names (those of mamba_ssm, so checkpoints load by name)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longstream.backbones import list_mixers
from longstream.backbones.mamba import Mamba
from longstream.backbones.mamba2 import Mamba2
from longstream.backbones.ops import cpu_kernels

torch.set_num_threads(1)

MIXERS = {
    "M": lambda **kw: Mamba(16, d_state=4, **kw),
    "M2": lambda **kw: Mamba2(16, d_state=8, headdim=8, ngroups=2, chunk_size=4, **kw),
}


def close(a, b, atol=2e-5, rtol=1e-4, msg=""):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def close_state(s1, s2, **kw):
    for k in s1:
        close(s1[k], s2[k], msg=f"state[{k!r}]", **kw)


@pytest.fixture(params=list(MIXERS))
def mixer(request):
    torch.manual_seed(0)
    return MIXERS[request.param]()


def test_registered():
    assert list_mixers()["M"] is Mamba and list_mixers()["M2"] is Mamba2


def test_forward_matches_float64_reference(mixer):
    x = torch.randn(2, 13, 16)
    st0 = {k: torch.randn_like(v) * 0.5 for k, v in mixer.init_state(2).items()}
    y, st = mixer(x, st0)
    y_ref, st_ref = mixer.reference(x, st0)
    assert y_ref.dtype == torch.float64
    close(y, y_ref)
    close_state(st, st_ref)


def test_chunked_and_step_equal_forward(mixer):
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        y, st = mixer(x)
        ys, s = [], None
        for a, b in [(0, 1), (1, 6), (6, 12)]:
            yp, s = mixer(x[:, a:b], s)
            ys.append(yp)
        close(torch.cat(ys, 1), y)
        close_state(s, st)
        s, ys = mixer.init_state(2), []
        for t in range(12):
            yt, s = mixer.step(x[:, t], s)
            ys.append(yt)
        close(torch.stack(ys, 1), y)
        close_state(s, st)
    for v in st.values():
        assert v.dtype == torch.float32


def test_padding_gives_state_after_last_valid_token(mixer):
    x = torch.randn(3, 10, 16)
    lengths = [10, 6, 1]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        y, st = mixer(x, mask=mask)
        for i, n in enumerate(lengths):
            yi, si = mixer(x[i : i + 1, :n])
            close(y[i : i + 1, :n], yi)
            close_state({k: v[i : i + 1] for k, v in st.items()}, si)
        # the padded state continues the stream as if the padding had never been fed
        y_next, _ = mixer(x[:, :2], st)
        y_ref, _ = mixer(x[1:2, :2], mixer(x[1:2, :6])[1])
        close(y_next[1:2], y_ref)


def test_input_gradient_matches_reference(mixer):
    x = torch.randn(2, 9, 16, requires_grad=True)
    xd = x.detach().double().requires_grad_()
    gy = torch.randn(2, 9, 16)
    (mixer(x)[0] * gy).sum().backward()
    (mixer.reference(xd)[0] * gy.double()).sum().backward()
    close(x.grad, xd.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not cpu_kernels.available(), reason="compiled CPU kernels not built")
def test_mamba_backends_agree_in_values_and_parameter_gradients():
    torch.manual_seed(0)
    m = Mamba(24, d_state=6, backend="cpp")
    x = torch.randn(2, 17, 24)
    grads = {}
    for backend in ("cpp", "torch"):
        m.backend = backend
        m.zero_grad()
        y, st = m(x)
        ((y**2).sum() + st["ssm"].sum()).backward()
        grads[backend] = (y.detach(), {k: p.grad.clone() for k, p in m.named_parameters()})
    close(grads["cpp"][0], grads["torch"][0])
    for k, g in grads["cpp"][1].items():
        close(g, grads["torch"][1][k], atol=1e-4, rtol=1e-3, msg=k)


def test_parameter_names_match_mamba_ssm():
    m = Mamba(32)
    assert sorted(n for n, _ in m.named_parameters()) == sorted(
        ["in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
         "A_log", "D", "out_proj.weight"]
    )
    assert m.x_proj.weight.shape == (2 + 32, 64) and m.dt_rank == 2
    m2 = Mamba2(64, d_state=16, headdim=16)
    assert sorted(n for n, _ in m2.named_parameters()) == sorted(
        ["in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"]
    )
    assert m2.in_proj.weight.shape == (2 * 128 + 2 * 16 + 8, 64)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.allclose(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.all(m.D == 1)
    m2 = Mamba2(64, d_state=16, headdim=16)
    A = torch.exp(m2.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt2 = F.softplus(m2.dt_bias)
    assert dt2.min() >= 0.001 * 0.999 and dt2.max() <= 0.1 * 1.001


def test_bad_mamba2_sizes_raise():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(16, headdim=7)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("halves", ["both", "stream", "gate"])
def test_in_proj_training_node_matches_float64(bias, halves):
    """The pooled in_proj training node (_InProjFn, taken from 4 MiB outputs on) against F.linear on
    the halves in float64: outputs and the gradients of x, weight and bias, also when only one half
    receives a gradient."""
    torch.manual_seed(0)
    m = Mamba(64, bias=bias)
    e = m.d_inner
    x = torch.randn(1, 8192, 64, requires_grad=True)  # 8192 x 128 float32 = 4 MiB: pooled path
    xi, z = m._in(x)
    assert xi.grad_fn is not None and "_InProjFn" in type(xi.grad_fn).__name__
    g1, g2 = torch.randn_like(xi), torch.randn_like(z)
    parts = [(xi * g1).sum()] * (halves != "gate") + [(z * g2).sum()] * (halves != "stream")
    loss = sum(parts)  # a half left out of the loss gets no gradient (None in the backward)
    gx, gw, *gb = torch.autograd.grad(loss, [x] + [p for p in (m.in_proj.weight, m.in_proj.bias) if p is not None])
    xd, wd = x.detach().double().requires_grad_(), m.in_proj.weight.detach().double().requires_grad_()
    bd = m.in_proj.bias.detach().double().requires_grad_() if bias else None
    ri, rz = F.linear(xd, wd[:e], None if bd is None else bd[:e]), F.linear(xd, wd[e:], None if bd is None else bd[e:])
    close(xi, ri, atol=1e-4)
    close(z, rz, atol=1e-4)
    ref = sum([(ri * g1.double()).sum()] * (halves != "gate") + [(rz * g2.double()).sum()] * (halves != "stream"))
    rgx, rgw, *rgb = torch.autograd.grad(ref, [xd, wd] + ([bd] if bias else []))
    close(gx, rgx, atol=1e-3, rtol=1e-4, msg="grad x")
    close(gw, rgw, atol=1e-2, rtol=1e-4, msg="grad weight")
    if bias:
        close(gb[0], rgb[0], atol=1e-2, rtol=1e-4, msg="grad bias")
