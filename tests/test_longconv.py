"""LongConv: squash and smooth, float64 reference, streaming, regulariser."""

from __future__ import annotations

import pytest
import torch

from longstream.backbones.longconv import LongConv, longconv_reference


def test_squash_and_smooth():
    m = LongConv(2, l_max=8, lam=0.5, smooth_width=1)
    with torch.no_grad():
        m.kernel_weight.copy_(torch.tensor([[1.0, -1.0, 0.2, -0.3, 0.6, 0, 0, 2], [0.0] * 8]))
    assert m.kernel()[0].tolist() == pytest.approx([0.5, -0.5, 0, 0, 0.1, 0, 0, 1.5])
    m.smooth_width = 3
    k = m.kernel()[0]
    assert k[1].item() == pytest.approx(0.0) and k[0].item() == pytest.approx(0.0)  # (0.5-0.5)/2
    assert k[7].item() == pytest.approx(0.75)  # edge: mean of the 2 in-range taps
    with pytest.raises(ValueError):
        LongConv(2, smooth_width=2)


def test_matches_reference_and_streams():
    m = LongConv(6, l_max=24)
    x = torch.randn(2, 70, 6)
    with torch.no_grad():
        y, s = m(x)
        assert (y.double() - longconv_reference(m, x)).abs().max() < 1e-4
        a, sa = m(x[:, :10])
        b, sb = m(x[:, 10:], sa)
        torch.testing.assert_close(torch.cat([a, b], 1), y, atol=1e-5, rtol=1e-5)
        assert sb["hist"].shape == (2, 6, 23)
        st, ys = m.init_state(2), []
        for t in range(70):
            yt, st = m.step(x[:, t], st)
            ys.append(yt)
        torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=1e-5)


def test_regularization_has_gradient():
    m = LongConv(4, l_max=16, lam=0.0)
    r = m.regularization(1.0)
    r.backward()
    assert r.item() > 0 and m.kernel_weight.grad.abs().sum() > 0
