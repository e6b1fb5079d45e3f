"""Vision Mamba's bidirectional Mamba mixer ("bimamba v2"), mixer symbol ``"VM"``.

Paper: Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model" (ICML 2024), Algorithm 1. One input projection gives the
stream ``x`` and the gate ``z``; a forward SSM branch (conv1d, x_proj, dt_proj, A, D) reads the
sequence left to right, a backward branch with its *own* conv and SSM parameters
(conv1d_b, x_proj_b, dt_proj_b, A_b, D_b) reads ``x`` and ``z`` reversed; each branch is gated
by ``silu(z)``; their outputs (the backward one brought back to the original order) are
averaged (``divide_out``, as the released Vim models do) and one output projection maps
them back to the model width::

    x, z = in_proj(h)                       # (b, l, e) each
    y_f  = ssm_f(silu(conv_f(x)), z)        # left to right
    y_b  = rev(ssm_b(silu(conv_b(rev x)), rev z))
    out  = out_proj((y_f + y_b) / 2)

Unlike :class:`~longstream.backbones.bidirectional.Bidirectional` over two Mambas (two input
and two output projections), the projections are computed once: the two GEMMs that dominate
a Mamba layer's cost are shared by both directions. Parameter names are those of the
upstream ``mamba_ssm`` fork in hustvl/Vim (``in_proj, conv1d, conv1d_b, x_proj, x_proj_b,
dt_proj, dt_proj_b, A_log, A_b_log, D, D_b, out_proj``) so Vim checkpoints load by name. The
conv and scan run in the compiled CPU kernels of :mod:`longstream.backbones.ops` (at
inference with softplus, skip and gate fused) like :class:`~longstream.backbones.mamba.Mamba`.

Axis legend: b batch, l length, d model width, e inner width (expand * d), n state size,
r dt rank, k conv width.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import State
from .bidirectional import _AddReversed, reverse_within_length
from .mamba import Mamba, init_dt_bias
from .ops import bigbuf
from .ops.causal_conv import causal_conv1d, causal_conv1d_ref
from .ops.selective_scan import selective_scan, selective_scan_ref
from .registry import register_mixer

__all__ = ["VimMixer"]


@register_mixer("VM")
class VimMixer(Mamba):
    """Bidirectional Mamba with shared projections, (b, l, d) -> (b, l, d); not streamable."""

    is_causal: ClassVar[bool] = False
    supports_step: ClassVar[bool] = False
    supports_state: ClassVar[bool] = False
    test_kwargs: ClassVar[dict[str, Any]] = {"d_state": 4}

    def __init__(self, d_model: int, *, divide_out: bool = True, **mamba_kwargs: Any) -> None:
        super().__init__(d_model, **mamba_kwargs)
        self.divide_out = divide_out
        e, n, r, k = self.d_inner, self.d_state, self.dt_rank, self.d_conv
        conv_bias = self.conv1d.bias is not None
        self.conv1d_b = nn.Conv1d(e, e, k, groups=e, padding=k - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj_b = nn.Linear(r, e, bias=True)
        std = r**-0.5 * float(mamba_kwargs.get("dt_scale", 1.0))  # the forward branch's init (Mamba.__init__)
        with torch.no_grad():
            if mamba_kwargs.get("dt_init", "random") == "constant":
                nn.init.constant_(self.dt_proj_b.weight, std)
            else:
                nn.init.uniform_(self.dt_proj_b.weight, -std, std)
            self.dt_proj_b.bias.copy_(init_dt_bias(
                e, mamba_kwargs.get("dt_min", 1e-3), mamba_kwargs.get("dt_max", 0.1),
                mamba_kwargs.get("dt_init_floor", 1e-4),
            ))  # fmt: skip
        self.dt_proj_b.bias._no_reinit = True  # type: ignore[attr-defined]
        self.A_b_log = nn.Parameter(self.A_log.detach().clone())  # S4D-real, (e, n)
        self.A_b_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D_b = nn.Parameter(torch.ones(e))
        self.D_b._no_weight_decay = True  # type: ignore[attr-defined]

    def _branch(self, xi: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                A_log: Tensor, D: Tensor) -> Tensor:
        """One direction: xi, z (b, l, e) -> gated SSM output y (b, l, e), in sequence order."""
        r, n = self.dt_rank, self.d_state
        u, _ = causal_conv1d(xi, conv.weight[:, 0, :], conv.bias, None, "silu", backend=self.backend)  # (b, l, e)
        x_dbl = bigbuf.linear(u, x_proj.weight)  # (b, l, r + 2n)
        dt_low, B, C = torch.split(x_dbl, [r, n, n], dim=-1)
        dt = bigbuf.linear(dt_low, dt_proj.weight)  # (b, l, e), bias + softplus inside the scan
        A = -torch.exp(A_log.float())  # (e, n)
        y, _ = selective_scan(u, dt, A, B, C, D, z, dt_proj.bias, True, None,
                              chunk_size=self.chunk_size, backend=self.backend)
        return y

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d), optional right-padding mask (b, l) -> (y (b, l, d), None)."""
        if state is not None:
            raise ValueError("VimMixer sees the whole sequence in both directions; it takes no state")
        if mask is not None and bool(mask.all()):
            mask = None
        xi, z = self._in(x)  # (b, l, e) each
        y_f = self._branch(xi, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        # the backward branch reads x and z reversed (within each row's valid length)
        xi_r, z_r = reverse_within_length(xi, mask), reverse_within_length(z, mask)
        del xi, z  # (b, l, e) each: freed before the second branch (lower peak memory at inference)
        y_r = self._branch(xi_r, z_r, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        if mask is None and y_r.device.type == "cpu" and y_r.dtype == y_f.dtype:
            y = _AddReversed.apply(y_f, y_r)  # y_f + reverse(y_r) in one pass
        else:
            y = y_f + reverse_within_length(y_r, mask)
        w = self.out_proj.weight * 0.5 if self.divide_out else self.out_proj.weight  # (d, e): cheaper than y / 2
        out = bigbuf.linear(y.to(x.dtype), w, self.out_proj.bias)  # (b, l, d)
        return out, None

    def init_state(self, batch_size: int, **_: Any) -> State:
        raise NotImplementedError("VimMixer is bidirectional: not streamable (no state)")

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError("VimMixer is bidirectional: not streamable (no step)")

    def reference(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """The same layer in float64 from the sequential references (unpadded x)."""
        p = {k: v.detach().double() for k, v in self.named_parameters()}
        x = x.double()
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        xz = F.linear(x, p["in_proj.weight"], p.get("in_proj.bias"))
        xi, z = xz[..., :e], xz[..., e:]

        def branch(xi: Tensor, z: Tensor, sfx: str) -> Tensor:
            conv = "conv1d_b" if sfx else "conv1d"
            u, _ = causal_conv1d_ref(xi, p[f"{conv}.weight"][:, 0], p.get(f"{conv}.bias"), None, "silu")
            dt_low, B, C = torch.split(F.linear(u, p[f"x_proj{sfx}.weight"]), [r, n, n], dim=-1)
            dt = F.linear(dt_low, p[f"dt_proj{sfx}.weight"], p[f"dt_proj{sfx}.bias"])
            A = -torch.exp(p["A_b_log" if sfx else "A_log"])
            return selective_scan_ref(u, dt, A, B, C, p[f"D{sfx}"], z, None, True)[0]

        y = branch(xi, z, "") + branch(xi.flip(1), z.flip(1), "_b").flip(1)
        if self.divide_out:
            y = y / 2
        return F.linear(y, p["out_proj.weight"], p.get("out_proj.bias")), None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bidirectional=v2, divide_out={self.divide_out}"
