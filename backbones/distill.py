"""Distil Hyena long filters into small diagonal SSMs for O(1)-per-token streaming.

Paper: "Laughing Hyena Distillery: Extracting Compact Recurrences From Convolutions"
(Massaroli, Poli, Fu, Kumbong, Parnichkun, Timalsina, Romero, McIntyre, Chen, Rudra,
Zhang, Ré, Ermon, Bengio, 2023). A long convolution ``y = h * u`` costs O(L) per token
when streamed. If each channel's filter is close to a sum of damped complex exponentials,
``h[0] = d`` and ``h[j] ~= Re(sum_i r_i lambda_i^(j-1))`` for ``j >= 1`` (modal form:
poles ``lambda_i``, residues ``r_i``), the convolution is the output of a diagonal SSM
``s_t = lambda s_{t-1} + u_t``, ``y_t = d u_t + Re(r . s_{t-1})``: O(modes) per token.

Fitting (:func:`fit_modal`), per channel, in float64: a Hankel matrix of the filter taps
``h[1:L_fit]`` is factorised by SVD; the shift invariance of its dominant left singular
vectors gives the poles (ESPRIT / matrix pencil, a Prony-type method); residues follow by
real least squares; an optional Adam refinement of poles and residues on the fit window
follows (kept only if it lowers the error). Real filters give poles in conjugate pairs;
only the member with ``Im >= 0`` is kept and its residue doubled, so the state holds
about half as many complex modes as the fit order. Poles are kept strictly inside the
unit circle (stable).

:class:`DistilledHyena` is a Hyena layer whose long convolutions are these SSMs: same
projections, short convolution and gating, ``step`` in O(D * modes), and a chunked
``forward`` (FFT with the SSM's kernel plus the free response of the carried state) that
equals ``step``. The SSM filter is not truncated at ``l_max``: it decays on its own.
:func:`distill_hyena` builds one from a trained :class:`~longstream.backbones.hyena.Hyena` and
reports the filter fit error and the extrapolated filter error.

Axis legend: b batch, l length, d model width, m modes (complex), o Hyena stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .hyena import Hyena
from .ops.fftconv import fft_causal_conv, right_align, ssm_final_state, ssm_free_response, ssm_kernel

__all__ = ["ModalFit", "fit_modal", "modal_filter", "DistilledHyena", "distill_hyena", "distill_module"]


@dataclass
class ModalFit:
    """Per-channel modal SSM: ``h[0] = d``, ``h[j] = Re(sum_m res[c, m] lam[c, m]^(j-1))`` for j >= 1."""

    lam: Tensor  # (C, M) complex128 poles (|lam| < 1)
    res: Tensor  # (C, M) complex128 residues (doubled for conjugate pairs)
    d: Tensor  # (C,) float64 tap 0
    rel_err: Tensor  # (C,) relative L2 error on the fit window


def modal_filter(fit: ModalFit, length: int) -> Tensor:
    """Taps ``(C, length)`` (float64) of a modal fit."""
    t = torch.arange(max(0, length - 1), dtype=torch.float64)
    v = _pow(fit.lam, t)  # (C, M, L-1)
    tail = torch.einsum("cm,cml->cl", fit.res, v).real
    return torch.cat([fit.d[:, None], tail], -1)[:, :length]


def _pow(lam: Tensor, t: Tensor) -> Tensor:
    """``lam[..., None] ** t`` (complex128), exact 0 for zero (padding) poles."""
    mag = lam.abs()[..., None]
    out = torch.polar(torch.where(mag > 0, mag, 1.0) ** t, lam.angle()[..., None] * t)
    return torch.where(mag > 0, out, (t == 0).to(out.dtype))


def _residues(s: Tensor, lam: Tensor) -> Tensor:
    """Real least squares for complex residues: ``s[c, t] ~= Re(sum_m r[c, m] lam[c, m]^t)``."""
    T = s.shape[-1]
    v = _pow(lam, torch.arange(T, dtype=torch.float64)).transpose(-1, -2)  # (C, T, M)
    A = torch.cat([v.real, -v.imag], -1)  # (C, T, 2M): Re(r v) = Re r Re v - Im r Im v
    sol = torch.linalg.lstsq(A, s[..., None], driver="gelsd").solution[..., 0]  # (C, 2M)
    M = lam.shape[-1]
    return torch.complex(sol[..., :M], sol[..., M:])


def _err(s: Tensor, lam: Tensor, res: Tensor) -> Tensor:
    t = torch.arange(s.shape[-1], dtype=torch.float64)
    fit = torch.einsum("cm,cmt->ct", res, _pow(lam, t)).real
    return (fit - s).norm(dim=-1) / s.norm(dim=-1).clamp_min(1e-300)


def fit_modal(h: Tensor, order: int, *, refine_steps: int = 0, lr: float = 1e-3, max_radius: float = 0.99999) -> ModalFit:
    """Fit each row of ``h`` (C, L) with a modal SSM of ``order`` poles (Hankel SVD + ESPRIT).

    Returns the fit with conjugate pairs merged (``Im lam >= 0`` kept, residue doubled).
    """
    h = h.double()
    C, L = h.shape
    s = h[:, 1:]  # taps j >= 1 are modelled by the SSM; tap 0 is the feed-through d
    T = s.shape[-1]
    if order >= T // 2:
        raise ValueError(f"modal order {order} too large for {L} filter taps (need order < {T // 2})")
    rows = T - T // 2 + 1
    idx = torch.arange(rows)[:, None] + torch.arange(T // 2)[None, :]  # (rows, cols) Hankel index
    Hk = s[:, idx]  # (C, rows, cols): Hk[i, j] = s[i + j]
    U, _, _ = torch.linalg.svd(Hk, full_matrices=False)
    Um = U[..., :order]  # (C, rows, order): rows ~ lam^i
    Phi = torch.linalg.pinv(Um[:, :-1]) @ Um[:, 1:]  # shift invariance
    lam = torch.linalg.eigvals(Phi)  # (C, order) complex
    rad = lam.abs()
    lam = torch.where(rad > max_radius, lam / rad * max_radius, lam)
    res = _residues(s, lam)
    err = _err(s, lam, res)
    if refine_steps > 0:
        lam, res, err = _refine(s, lam, res, err, refine_steps, lr, max_radius)
    lam, res = _merge_pairs(lam, res)
    return ModalFit(lam=lam, res=res, d=h[:, 0].clone(), rel_err=err)


def _refine(s: Tensor, lam: Tensor, res: Tensor, err0: Tensor, steps: int, lr: float, max_radius: float):
    """Adam on (log|lam|, arg lam, res) minimising the relative squared error on the fit window.

    Real arithmetic only: ``Re(r lam^t) = |lam|^t (Re r cos(t arg) - Im r sin(t arg))``.
    """
    t = torch.arange(s.shape[-1], dtype=torch.float64)
    log_max = float(torch.log(torch.tensor(max_radius, dtype=torch.float64)))
    log_r = lam.abs().clamp_min(1e-12).log().clone().requires_grad_(True)  # (C, M)
    ang = lam.angle().clone().requires_grad_(True)
    re, im = res.real.clone().requires_grad_(True), res.imag.clone().requires_grad_(True)
    params = [log_r, ang, re, im]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    scale = s.pow(2).sum(-1).clamp_min(1e-300)
    with torch.enable_grad():
        for k in range(1, steps + 1):
            mag = torch.exp((log_r.clamp(max=log_max)[..., None] * t).clamp(min=-700.0))  # (C, M, T)
            ph = ang[..., None] * t
            fit = (mag * (re[..., None] * torch.cos(ph) - im[..., None] * torch.sin(ph))).sum(1)  # (C, T)
            loss = ((fit - s).pow(2).sum(-1) / scale).sum()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():  # plain Adam (torch.optim's first step imports a lot)
                for p, g, a, b in zip(params, grads, m1, m2):
                    a.mul_(0.9).add_(g, alpha=0.1)
                    b.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.sub_(lr * (a / (1 - 0.9**k)) / ((b / (1 - 0.999**k)).sqrt() + 1e-12))
    with torch.no_grad():
        lam_n = torch.polar(log_r.clamp(max=log_max).exp(), ang)
        res_n = _residues(s, lam_n)  # re-solve residues exactly for the refined poles
        err_n = _err(s, lam_n, res_n)
        better = (err_n < err0)[:, None]
        return torch.where(better, lam_n, lam), torch.where(better, res_n, res), torch.minimum(err_n, err0)


def _merge_pairs(lam: Tensor, res: Tensor, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Keep one pole per conjugate pair (Im >= 0) and fold the partner's residue into it.

    For a real signal ``Re(r lam^t + r' conj(lam)^t) = Re((r + conj(r')) lam^t)``. Rows are
    padded with zero-residue poles to a common width.
    """
    C, M = lam.shape
    keep = lam.imag > tol  # upper half plane
    real = lam.imag.abs() <= tol
    lam_out = torch.zeros(C, M, dtype=lam.dtype)
    res_out = torch.zeros(C, M, dtype=res.dtype)
    width = 0
    for c in range(C):  # small C x M loop, done once at distillation time
        ls, rs = [], []
        used = torch.zeros(M, dtype=torch.bool)
        for m in range(M):
            if used[m]:
                continue
            if real[c, m]:
                ls.append(lam[c, m].real + 0j)
                rs.append(res[c, m].real + 0j)  # Re(r lam^t) = Re(r) lam^t for real lam
                used[m] = True
                continue
            # nearest conjugate partner among unused poles
            dist = (lam[c] - lam[c, m].conj()).abs()
            dist[used] = float("inf")
            dist[m] = float("inf")
            p = int(dist.argmin())
            if dist[p] < 1e-6 * max(1.0, float(lam[c, m].abs())):
                r = res[c, m] + res[c, p].conj()
                q = m if keep[c, m] else p
                r = r if q == m else r.conj()
                ls.append(lam[c, q])
                rs.append(r)
                used[m] = used[p] = True
            else:  # unpaired complex pole: keep as is (Re() of it is still a valid model)
                ls.append(lam[c, m])
                rs.append(res[c, m])
                used[m] = True
        n = len(ls)
        lam_out[c, :n] = torch.stack(ls)
        res_out[c, :n] = torch.stack(rs)
        width = max(width, n)
    return lam_out[:, :width], res_out[:, :width]


class DistilledHyena(Backbone):
    """A Hyena layer whose long convolutions are diagonal SSMs (built by :func:`distill_hyena`).

    State: ``{"short": (B, (order+1)D, k-1), "ssm": [(B, D, M, 2) float32 per stage]}``
    (the complex SSM state as a real view): constant size, O(1) per token.
    """

    is_causal = True
    supports_step = True
    supports_state = True

    def __init__(self, source: Hyena, fits: list[ModalFit]) -> None:
        super().__init__()
        if source._bidirectional:
            raise ValueError("only causal Hyena layers can be distilled into recurrences")
        self.d_model, self.order, self.short_filter_order = source.d_model, source.order, source.short_filter_order
        self.in_proj = copy.deepcopy(source.in_proj)
        self.out_proj = copy.deepcopy(source.out_proj)
        self.short_filter = copy.deepcopy(source.short_filter)
        self.dropout = copy.deepcopy(source.dropout)
        bias = source._bias().detach().double()  # (order-1, D)
        M = max(f.lam.shape[-1] for f in fits)
        pad = lambda x: F.pad(x, (0, M - x.shape[-1]))
        log_lam = torch.stack([pad(f.lam).log() if f.lam.numel() else pad(f.lam) for f in fits])  # (O, D, M)
        log_lam = torch.complex(log_lam.real.clamp(min=-60.0).nan_to_num(-60.0, neginf=-60.0), log_lam.imag)
        self.log_lam = nn.Parameter(torch.view_as_real(log_lam).float())  # (O, D, M, 2)
        self.res = nn.Parameter(torch.view_as_real(torch.stack([pad(f.res) for f in fits])).float())  # (O, D, M, 2)
        self.skip = nn.Parameter(torch.stack([f.d for f in fits]).float() + bias.float())  # (O, D): h[0] + bias

    def _modes(self) -> tuple[Tensor, Tensor]:
        return torch.view_as_complex(self.log_lam.contiguous()), torch.view_as_complex(self.res.contiguous())

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        dev = device if device is not None else self.skip.device
        M = self.log_lam.shape[2]
        return {
            "short": torch.zeros(batch_size, self.d_model * (self.order + 1), self.short_filter_order - 1, device=dev),
            "ssm": [torch.zeros(batch_size, self.d_model, M, 2, device=dev) for _ in range(self.order - 1)],
        }

    def forward(self, x: Tensor, state: State = None, *, mask: Tensor | None = None) -> tuple[Tensor, State]:
        return self._forward(x, state, mask=mask, want_state=True)

    def _forward(self, x: Tensor, state: State = None, *, mask: Tensor | None = None, want_state: bool = True):
        B, L, D = x.shape
        N, K = self.order, self.short_filter_order
        lengths = None if mask is None else lengths_from_mask(mask, B, L, x.device)
        if state is None:
            state = self.init_state(B, device=x.device)
        z = self.in_proj(x.float()).transpose(1, 2)  # (B, (N+1)D, L)
        zpad = torch.cat([state["short"].to(z.dtype), z], -1)
        zc = F.conv1d(zpad, self.short_filter.weight.float(), self.short_filter.bias.float(), groups=z.shape[1])
        src = zpad if lengths is None else right_align(zpad, lengths + K - 1)
        new_short = src[..., src.shape[-1] - (K - 1) :]
        parts = zc.view(B, N + 1, D, L)
        xs, v = [parts[:, i] for i in range(N)], parts[:, N]
        log_lam, res = self._modes()
        new_ssm = []
        for o in range(N - 1):
            v = self.dropout(v * xs[N - 1 - o])
            s0 = torch.view_as_complex(state["ssm"][o].float().contiguous())  # (B, D, M)
            tail = ssm_kernel(res[o], log_lam[o], max(L - 1, 0))  # taps j >= 1
            y = F.pad(fft_causal_conv(v, tail), (1, 0))[..., :L] if L > 1 else torch.zeros_like(v)
            y = y + ssm_free_response(s0, res[o], log_lam[o], L, offset=0) + v * self.skip[o][:, None]
            u_st = v if lengths is None else right_align(v, lengths)
            s1 = ssm_final_state(u_st, torch.ones((), dtype=log_lam.dtype), log_lam[o], None)
            if lengths is None:
                s1 = s1 + s0 * torch.exp(log_lam[o] * L)
            else:
                s1 = s1 + s0 * torch.exp(log_lam[o][None] * lengths.view(B, 1, 1).to(torch.float32))
            new_ssm.append(torch.view_as_real(s1).float())
            v = y
        out = self.out_proj((v * xs[0]).transpose(1, 2)).to(x.dtype)
        return out, ({"short": new_short, "ssm": new_ssm} if want_state else None)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token in O(D * modes): ``y = skip u + Re(res . s)``, then ``s <- lam s + u``."""
        N, D = self.order, self.d_model
        z = self.in_proj(x_t.float())
        window = torch.cat([state["short"].to(z.dtype), z[..., None]], -1)  # (B, C, K)
        zc = (window * self.short_filter.weight[:, 0].float()).sum(-1) + self.short_filter.bias.float()
        parts = zc.view(-1, N + 1, D)
        xs, v = [parts[:, i] for i in range(N)], parts[:, N]
        log_lam, res = self._modes()
        new_ssm = []
        for o in range(N - 1):
            v = v * xs[N - 1 - o]
            s = torch.view_as_complex(state["ssm"][o].float().contiguous())  # (B, D, M)
            y = self.skip[o] * v + (res[o] * s).sum(-1).real
            s = torch.exp(log_lam[o]) * s + v[..., None]
            new_ssm.append(torch.view_as_real(s).float())
            v = y
        return self.out_proj(v * xs[0]).to(x_t.dtype), {"short": window[..., 1:], "ssm": new_ssm}


def distill_hyena(
    layer: Hyena, n_modes: int = 32, fit_len: int | None = None, *, refine_steps: int = 0
) -> tuple[DistilledHyena, dict[str, Any]]:
    """Fit every long filter of ``layer`` on its first ``fit_len`` taps (default ``l_max``).

    Returns the distilled layer and a report: ``filter_fit_rel_err`` (max over channels, fit
    window), ``filter_rel_err_full`` (max over channels on all ``l_max`` taps, i.e. the
    extrapolation beyond the fit window), ``modes`` (complex modes per channel after pair
    merging).
    """
    L_fit = min(fit_len or layer.l_max, layer.l_max)
    with torch.no_grad():
        k_full = layer.filters(layer.l_max).double()  # (O, D, l_max)
    fits = [fit_modal(k_full[o, :, :L_fit], n_modes, refine_steps=refine_steps) for o in range(layer.order - 1)]
    full_err = []
    for o, f in enumerate(fits):
        hh = modal_filter(f, layer.l_max)
        full_err.append(((hh - k_full[o]).norm(dim=-1) / k_full[o].norm(dim=-1)).max().item())
    report = {
        "fit_len": L_fit,
        "n_modes": n_modes,
        "modes": max(f.lam.shape[-1] for f in fits),
        "filter_fit_rel_err": max(f.rel_err.max().item() for f in fits),
        "filter_rel_err_full": max(full_err),
    }
    return DistilledHyena(layer, fits), report


def distill_module(module: nn.Module, **kwargs: Any) -> list[dict[str, Any]]:
    """Replace, in place, every causal :class:`Hyena` inside ``module`` by its distillation."""
    reports = []
    for name, child in list(module.named_children()):
        if isinstance(child, Hyena) and not child._bidirectional:
            new, rep = distill_hyena(child, **kwargs)
            setattr(module, name, new)
            reports.append({"module": name, **rep})
        else:
            reports += distill_module(child, **kwargs)
    return reports
