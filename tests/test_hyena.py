"""Hyena: float64 reference, streaming state and step, the bounded-memory path, bidirectional."""

from __future__ import annotations

import pytest
import torch

import longstream.backbones.hyena as hy
from longstream.backbones.hyena import Hyena, HyenaBidirectional, hyena_reference


def make(**kw) -> Hyena:
    kw = {"l_max": 48, "filter_order": 8, "emb_dim": 5, "w": 10.0, **kw}
    return Hyena(8, **kw)


@pytest.mark.parametrize("order", [2, 3])
def test_matches_float64_reference(order):
    m = make(order=order)
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        y, _ = m(x)
    ref = hyena_reference(m, x)
    assert (y.double() - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def test_longer_than_l_max_uses_truncated_filter():
    m = make(l_max=16)
    x = torch.randn(1, 70, 8)
    with torch.no_grad():
        y, s = m(x)
    assert (y.double() - hyena_reference(m, x)).abs().max() < 1e-4
    assert s["long"][0].shape == (1, 8, 15)  # history bounded by l_max - 1


def test_chunked_state_and_step_equal_full():
    m = make(order=3)
    x = torch.randn(2, 60, 8)
    with torch.no_grad():
        y, s = m(x)
        a, sa = m(x[:, :17])
        b, sb = m(x[:, 17:], sa)
        torch.testing.assert_close(torch.cat([a, b], 1), y, atol=1e-5, rtol=1e-4)
        for k in range(2):
            torch.testing.assert_close(sb["long"][k], s["long"][k], atol=1e-5, rtol=1e-4)
        st, ys = m.init_state(2), []
        for t in range(60):
            yt, st = m.step(x[:, t], st)
            ys.append(yt)
        torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(st["short"], s["short"])


def test_channel_group_path_equals_one_group(monkeypatch):
    m = make()
    x = torch.randn(2, 30, 8)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 21:] = False
    y1, s1 = m(x, mask=mask)  # grad enabled: one group
    monkeypatch.setattr(hy, "_GROUP_WORKSPACE", 2 * 30 * 3 * 3)  # 3 channels per group
    monkeypatch.setattr(hy, "_FILTER_BLOCK", 7)  # filter generated in blocks
    with torch.no_grad():
        assert m._group_size(2, 30) == 3
        y2, s2 = m(x, mask=mask)
    # float32 FFTs of different batch shapes round differently (seen: 1.1e-6 on outputs of ~1e-2)
    torch.testing.assert_close(y2, y1.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s2["short"], s1["short"].detach())
    torch.testing.assert_close(s2["long"][0], s1["long"][0].detach())


def test_causal_gradient_and_hyenadna_names():
    m = make()
    x = torch.randn(1, 20, 8, requires_grad=True)
    y, _ = m(x)
    y[0, 9].sum().backward()
    g = x.grad[0].abs()
    assert g[10:].max() < 1e-6 * g[:10].max()  # FFT round-off only
    keys = set(m.state_dict())
    for k in ("in_proj.weight", "short_filter.weight", "filter_fn.pos_emb.z", "filter_fn.pos_emb.t",
              "filter_fn.implicit_filter.0.weight", "filter_fn.implicit_filter.1.freq",
              "filter_fn.implicit_filter.5.freq", "filter_fn.implicit_filter.6.weight",
              "filter_fn.modulation.deltas", "filter_fn.bias", "out_proj.bias"):  # fmt: skip
        assert k in keys, k
    assert m.filter_fn.implicit_filter[1] is m.filter_fn.implicit_filter[3]  # shared sine


def test_bidirectional_reference_padding_and_flags():
    m = HyenaBidirectional(8, l_max=48, filter_order=8, emb_dim=3)
    assert not m.is_causal and not m.supports_step and not m.supports_state
    x = torch.randn(2, 33, 8)
    with torch.no_grad():
        y, s = m(x)
        assert s is None
        assert (y.double() - hyena_reference(m, x)).abs().max() < 1e-4
        mask = torch.ones(2, 33, dtype=torch.bool)
        mask[1, 20:] = False
        yp, _ = m(x, mask=mask)
        yu, _ = m(x[1:, :20])
    torch.testing.assert_close(yp[1, :20], yu[0], atol=1e-5, rtol=1e-5)
    # future inputs matter (non-causal)
    x2 = x.clone()
    x2[:, -1] += 1
    with torch.no_grad():
        assert (m(x2)[0][:, 0] - y[:, 0]).abs().max() > 0
    with pytest.raises(ValueError):
        m(x, state={})
