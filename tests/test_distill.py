"""Laughing-Hyena distillation: modal fit, O(1) step, parity with the Hyena layer on 4x longer inputs."""

from __future__ import annotations

import torch

from longstream.backbones.distill import (
    DistilledHyena,
    distill_hyena,
    distill_module,
    fit_modal,
    modal_filter,
)
from longstream.backbones.hyena import Hyena
from longstream.backbones.hyenadna import HyenaDNAConfig, HyenaDNAModel

L_FIT = 128


def decaying_hyena() -> Hyena:
    """A Hyena layer whose window decays (shift 0): filters are ~0 past the fit window."""
    return Hyena(16, l_max=4 * L_FIT, filter_order=16, emb_dim=5, w=10.0, shift=0.0,
                 slow_decay_pct=0.1, fast_decay_pct=0.03).eval()  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_fit_recovers_exact_modes_and_merges_pairs():
    t = torch.arange(200, dtype=torch.float64)
    lam = torch.tensor([0.97 * torch.exp(torch.tensor(0.3j)), 0.9, -0.5], dtype=torch.complex128)
    h = (1.5 * lam[0] ** t).real + 0.7 * lam[1].real ** t - 0.2 * lam[2].real ** t  # lag j -> sample j-1
    h = torch.cat([torch.tensor([0.3], dtype=torch.float64), h])[None]  # tap 0 = feed-through
    fit = fit_modal(h, order=4)  # 4 = 2 (pair) + 2 real poles
    assert fit.rel_err.item() < 1e-8
    assert fit.lam.shape[-1] == 3  # the conjugate pair is one complex mode
    # extrapolation beyond the 200 fitted taps is exact for an exact modal filter
    torch.testing.assert_close(modal_filter(fit, 400), _extend(lam, 400), atol=1e-8, rtol=1e-8)


def _extend(lam: torch.Tensor, n: int) -> torch.Tensor:
    t = torch.arange(n - 1, dtype=torch.float64)
    tail = (1.5 * lam[0] ** t).real + 0.7 * lam[1].real ** t - 0.2 * lam[2].real ** t
    return torch.cat([torch.tensor([0.3], dtype=torch.float64), tail])[None]


def test_distilled_step_matches_hyena_on_4x_longer_inputs():
    torch.manual_seed(0)
    layer = decaying_hyena()
    dist, rep = distill_hyena(layer, n_modes=32, fit_len=L_FIT)
    assert rep["filter_fit_rel_err"] < 1e-2 and rep["filter_rel_err_full"] < 1e-2
    assert rep["modes"] <= 32
    x = torch.randn(2, 4 * L_FIT, 16)  # 4x the fitting length
    with torch.no_grad():
        y, _ = layer(x)
        st, ys = dist.init_state(2), []
        for t in range(x.shape[1]):
            yt, st = dist.step(x[:, t], st)
            ys.append(yt)
    err = rel(torch.stack(ys, 1), y)
    assert err < 1e-3, f"distilled step rel err {err:.2e}"
    # the state is O(1): its size does not depend on how many tokens were seen
    assert st["ssm"][0].shape == (2, 16, dist.log_lam.shape[2], 2)


def test_distilled_forward_chunks_and_padding_equal_step():
    torch.manual_seed(1)
    layer = Hyena(8, l_max=64, order=3, filter_order=8, emb_dim=3, shift=0.0, slow_decay_pct=0.2).eval()
    dist, _ = distill_hyena(layer, n_modes=12)
    assert isinstance(dist, DistilledHyena) and dist.supports_step and dist.is_causal
    x = torch.randn(2, 50, 8)
    with torch.no_grad():
        y, s = dist(x)
        a, sa = dist(x[:, :19])
        b, sb = dist(x[:, 19:], sa)
        torch.testing.assert_close(torch.cat([a, b], 1), y, atol=1e-5, rtol=1e-4)
        st, ys = dist.init_state(2), []
        for t in range(50):
            yt, st = dist.step(x[:, t], st)
            ys.append(yt)
        torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=1e-4)
        for k in range(2):
            torch.testing.assert_close(st["ssm"][k], s["ssm"][k], atol=1e-4, rtol=1e-4)
        mask = torch.ones(2, 31, dtype=torch.bool)
        mask[0, 12:] = False
        yp, sp = dist(x[:, 19:], sa, mask=mask)
        yu, su = dist(x[:1, 19:31], {"short": sa["short"][:1], "ssm": [t_[:1] for t_ in sa["ssm"]]})
        torch.testing.assert_close(yp[0, :12], yu[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sp["ssm"][1][0], su["ssm"][1][0], atol=1e-5, rtol=1e-4)


def test_distill_module_replaces_hyena_in_hyenadna():
    torch.manual_seed(2)
    cfg = HyenaDNAConfig(d_model=8, n_layer=2, d_inner=16, l_max=64, filter_order=8, emb_dim=3, shift=0.0)
    model = HyenaDNAModel(cfg).eval()
    for layer in model.backbone.layers:  # make the windows decay within the filter length
        layer.mixer.filter_fn.modulation.deltas.mul_(8)
    ids = torch.randint(0, 12, (1, 64))
    with torch.no_grad():
        ref = model(ids)
    reports = distill_module(model, n_modes=24)
    assert len(reports) == 2 and all(isinstance(l.mixer, DistilledHyena) for l in model.backbone.layers)
    with torch.no_grad():
        out = model(ids)
    assert rel(out, ref) < 1e-2


def test_gradient_refinement_never_worsens_the_fit():
    torch.manual_seed(3)
    layer = Hyena(4, l_max=64, filter_order=8, emb_dim=5, w=10.0, shift=0.0, slow_decay_pct=0.3)
    with torch.no_grad():
        h = layer.filters(64)[0].double()
    plain = fit_modal(h, order=6)
    refined = fit_modal(h, order=6, refine_steps=30, lr=1e-2)
    assert (refined.rel_err <= plain.rel_err + 1e-12).all()
    assert (refined.lam.abs() < 1).all()
