"""Mamba-2 mixer (Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality", 2024).

One input projection produces the gate ``z``, the stream ``x`` with the grouped SSM
inputs ``B, C`` (these three pass together through a short causal conv + SiLU), and one
step ``dt`` per head. The SSM has a *scalar* decay per head (``A_h``), which makes the
chunked SSD algorithm (matmuls inside chunks, a short recurrence across chunks) exact.
The output is normalised by a gated RMSNorm, ``rmsnorm(y * silu(z))`` per group, and
projected back. Parameter names are those of ``mamba_ssm.modules.mamba2.Mamba2``
(``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``),
so state-spaces/mamba2-* checkpoints load by name.

State: ``{"conv": (b, e + 2 g n, k-1), "ssm": (b, h, p, n)}``, float32.

Axis legend: b batch, l length, d model width, e inner width (= h * p), h heads, p head
dim, g groups, n state size, k conv width.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .mamba import init_dt_bias
from .ops import bigbuf, cpu_kernels
from .ops.causal_conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from .ops.ssd import ssd_scan_packed, ssd_scan_ref
from .registry import register_mixer

__all__ = ["GatedRMSNorm", "Mamba2"]


def _compiled_norm(x: Tensor, z: Tensor) -> bool:
    """True where the compiled gated RMSNorm applies (float32 CPU, dense rows, kernels built)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and z.dtype == torch.float32
            and x.stride(-1) == 1 and z.stride(-1) == 1 and cpu_kernels.has_op("gated_rmsnorm_fwd"))


class _GatedRMSNormFn(torch.autograd.Function):
    """``rmsnorm(x * silu(z)) * w`` per group with a hand-written backward that recomputes the
    gate from (x, z) and saves only the (rows, groups) inverse RMS; the backward runs in row
    blocks of ~0.5 MB so its passes stay in cache (float32 on CPU with the kernels built: one
    compiled pass per row, ``gated_rmsnorm_bwd``). x, z (N, d) float32/64, w (d,)."""

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, w: Tensor, group_size: int, eps: float) -> Tensor:  # type: ignore[override]
        ctx.group_size = group_size
        ctx.compiled = _compiled_norm(x, z) and w.dtype == torch.float32 and cpu_kernels.has_op("gated_rmsnorm_bwd")
        if _compiled_norm(x, z):
            out, r = cpu_kernels.ops().gated_rmsnorm_fwd(x, z, w.contiguous(), group_size, eps)  # one pass per row
            ctx.save_for_backward(x, z, w, r)
            return out
        u = F.silu(z).mul_(x).unflatten(-1, (-1, group_size))  # (N, groups, group_size)
        r = torch.linalg.vecdot(u, u).div_(group_size).add_(eps).rsqrt_()  # (N, groups)
        ctx.save_for_backward(x, z, w, r)
        return u.mul_(r[..., None]).flatten(-2).mul_(w)

    @staticmethod
    def backward(ctx, go: Tensor):  # type: ignore[override]
        x, z, w, r = ctx.saved_tensors
        if ctx.compiled and go.dtype == torch.float32:
            gx, gz, gw = cpu_kernels.ops().gated_rmsnorm_bwd(go.contiguous(), x, z, w.contiguous(), r)
            return gx, gz, gw, None, None
        N, d = x.shape
        gs = ctx.group_size
        gx, gz, gw = torch.empty_like(x), torch.empty_like(z), torch.zeros_like(w)
        blk = max(16, (1 << 17) // max(1, d))
        for r0 in range(0, N, blk):
            r1 = min(N, r0 + blk)
            xb, zb, rb = x[r0:r1], z[r0:r1], r[r0:r1, :, None]  # rb (n, groups, 1)
            s = F.silu(zb)
            nh = (s * xb).unflatten(-1, (-1, gs)).mul_(rb)  # normalised (n, groups, gs)
            g = go[r0:r1]
            gw += torch.linalg.vecdot(g, nh.flatten(-2), dim=0)
            gh = (g * w).unflatten(-1, (-1, gs))
            dot = torch.linalg.vecdot(gh, nh).div_(gs)  # (n, groups)
            gu = gh.addcmul_(nh, dot[..., None], value=-1.0).mul_(rb).flatten(-2)  # grad of u = x * silu(z)
            torch.mul(gu, s, out=gx[r0:r1])
            gz[r0:r1] = torch.ops.aten.silu_backward(gu.mul_(xb), zb)
        return gx, gz, gw, None, None


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x * silu(z)) * weight``, normalised over groups of ``group_size`` channels."""

    def __init__(self, d: int, group_size: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size = group_size or d
        self.eps = eps

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, z, self.weight))):
            return self._forward_inplace(x, z).to(dtype)
        if z is not None and x.device.type == "cpu":
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            shape = x.shape
            xf, zf = x.to(ct).reshape(-1, shape[-1]), z.to(ct).reshape(-1, shape[-1])  # (N, d)
            y = _GatedRMSNormFn.apply(xf, zf, self.weight.to(ct), self.group_size, self.eps)
            return y.view(shape).to(dtype)
        x = x.float() if x.dtype != torch.float64 else x
        if z is not None:
            x = x * F.silu(z.to(x.dtype))
        xg = x.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xg.flatten(-2) * self.weight.to(x.dtype)).to(dtype)

    def _forward_inplace(self, x: Tensor, z: Tensor | None) -> Tensor:
        """The same without autograd in three passes over x (in place on one new tensor), or one
        compiled pass per row (``csrc/gated_norm_cpu.cpp``) for float32 on CPU."""
        if z is not None and _compiled_norm(x, z):
            d = x.shape[-1]
            out, _ = cpu_kernels.ops().gated_rmsnorm_fwd(
                x.reshape(-1, d), z.reshape(-1, d), self.weight.float().contiguous(), self.group_size, self.eps)
            return out.view(x.shape)
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        u = F.silu(z.to(ct)).mul_(x) if z is not None else x.to(ct, copy=True)  # (..., d)
        ug = u.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        r = torch.linalg.vecdot(ug, ug).div_(self.group_size).add_(self.eps).rsqrt_()  # (..., groups)
        return ug.mul_(r[..., None]).flatten(-2).mul_(self.weight.to(ct))


@register_mixer("M2")
class Mamba2(Backbone):
    """SSD mixer with multi-head scalar-decay state, (b, l, d) -> (b, l, d), streamable."""

    is_causal: ClassVar[bool] = True
    supports_step: ClassVar[bool] = True
    supports_state: ClassVar[bool] = True
    test_kwargs: ClassVar[dict[str, Any]] = {"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"d_inner = expand * d_model = {self.d_inner} must be divisible by headdim = {headdim}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads ({self.nheads}) must be divisible by ngroups ({ngroups})")
        self.ngroups = ngroups
        self.d_state = d_state
        self.d_conv = d_conv
        self.chunk_size = chunk_size
        self.dt_limit = tuple(dt_limit)
        self.backend = backend
        self.rmsnorm = rmsnorm
        e, g, n, h = self.d_inner, ngroups, d_state, self.nheads
        self.conv_dim = e + 2 * g * n
        self.in_proj = nn.Linear(d_model, 2 * e + 2 * g * n + h, bias=bias)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(h, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True  # type: ignore[attr-defined]
        A = torch.empty(h).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(e if D_has_hdim else h))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        if rmsnorm:
            self.norm = GatedRMSNorm(e, group_size=e // g, eps=norm_eps)
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    # ------------------------------------------------------------------ helpers
    def _split_in(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., d) -> z (..., e), xBC (..., e + 2gn), dt (..., h); each its own GEMM into a
        contiguous (pooled, when large) buffer, one autograd node (``bigbuf.split_linear``)."""
        z, xBC, dt = bigbuf.split_linear(x, self.in_proj.weight, self.in_proj.bias,
                                         (self.d_inner, self.conv_dim, self.nheads))
        return z, xBC, dt

    def _dt(self, dt: Tensor) -> Tensor:
        dt = F.softplus(dt.float() + self.dt_bias.float())
        lo, hi = self.dt_limit
        if lo > 0.0 or hi < float("inf"):
            dt = dt.clamp(lo, hi)
        return dt

    def _D(self) -> Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D.numel() == self.d_inner else self.D

    def _out(self, y: Tensor, z: Tensor) -> Tensor:
        y = self.norm(y, z) if self.rmsnorm else y * F.silu(z)
        return bigbuf.linear(y.to(self.out_proj.weight.dtype), self.out_proj.weight, self.out_proj.bias)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero conv window (b, e + 2gn, k-1) and SSM state (b, h, p, n), float32."""
        device = device if device is not None else self.A_log.device
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device),
            "ssm": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device),
        }

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d) -> (y (b, l, d), state after each row's last valid token)."""
        b, l, _ = x.shape
        e, g, n, h, p = self.d_inner, self.ngroups, self.d_state, self.nheads, self.headdim
        if state is None:
            state = self.init_state(b, device=x.device)
        lengths = None if mask is None or bool(mask.all()) else lengths_from_mask(mask, b, l, x.device)
        z, xBC, dt = self._split_in(x)
        xBC, conv_state = causal_conv1d(
            xBC, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"], "silu", lengths=lengths
        )
        dt = self._dt(dt)  # (b, l, h)
        if lengths is not None:  # dt = 0 on padding: the state passes through unchanged
            dt = dt * mask[:, :, None].to(dt.dtype)
        A = -torch.exp(self.A_log.float())  # (h,)
        # x, B, C are read from the conv output in place (one gradient buffer for all three in training)
        y, ssm_state = ssd_scan_packed(
            xBC, (h, p), (g, n), dt, A, self.chunk_size, D=self._D(), initial_state=state["ssm"], backend=self.backend,
        )
        return self._out(y.reshape(b, l, e), z), {"conv": conv_state, "ssm": ssm_state.float()}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (b, d) -> (y_t (b, d), new state): one token in O(h p n)."""
        e, g, n, h, p = self.d_inner, self.ngroups, self.d_state, self.nheads, self.headdim
        bsz = x_t.shape[0]
        z, xBC, dt = self._split_in(x_t)
        xBC, conv_state = causal_conv1d_update(xBC, state["conv"], self.conv1d.weight[:, 0], self.conv1d.bias, "silu")
        xs, B, C = torch.split(xBC.float(), [e, g * n, g * n], dim=-1)
        xs = xs.reshape(bsz, h, p)
        Bh = B.reshape(bsz, g, n).repeat_interleave(h // g, dim=1)  # (b, h, n)
        Ch = C.reshape(bsz, g, n).repeat_interleave(h // g, dim=1)
        dt = self._dt(dt)  # (b, h)
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))  # (b, h)
        st = state["ssm"] * decay[:, :, None, None] + (dt[:, :, None] * xs)[..., None] * Bh[:, :, None, :]  # (b, h, p, n)
        D = self._D().float()
        y = torch.matmul(st, Ch[..., None])[..., 0] + xs * (D[:, None] if D.dim() == 1 else D)  # (b, h, p)
        return self._out(y.reshape(bsz, e).to(x_t.dtype), z), {"conv": conv_state, "ssm": st}

    # ------------------------------------------------------------------ reference
    def reference(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """The same layer in float64 with the sequential references of ``longstream.backbones.ops``."""
        x = x.double()
        b, l, _ = x.shape
        e, g, n, h, p = self.d_inner, self.ngroups, self.d_state, self.nheads, self.headdim
        P = {k: v.detach().double() for k, v in self.named_parameters()}
        zxbcdt = F.linear(x, P["in_proj.weight"], P.get("in_proj.bias"))
        z, xBC, dt = torch.split(zxbcdt, [e, self.conv_dim, h], dim=-1)
        xBC, conv_state = causal_conv1d_ref(
            xBC, P["conv1d.weight"][:, 0], P.get("conv1d.bias"), None if state is None else state["conv"], "silu"
        )
        xs, B, C = torch.split(xBC, [e, g * n, g * n], dim=-1)
        dt = F.softplus(dt + P["dt_bias"])
        lo, hi = self.dt_limit
        dt = dt.clamp(lo, hi) if (lo > 0.0 or hi < math.inf) else dt
        D = P["D"].view(h, p) if P["D"].numel() == e else P["D"]
        y, st = ssd_scan_ref(
            xs.reshape(b, l, h, p), dt, -torch.exp(P["A_log"]), B.reshape(b, l, g, n), C.reshape(b, l, g, n),
            D, None, False, None if state is None else state["ssm"],
        )
        y = y.reshape(b, l, e)
        if self.rmsnorm:
            yg = (y * F.silu(z)).unflatten(-1, (g, e // g))
            y = (yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + self.norm.eps)).flatten(-2) * P["norm.weight"]
        else:
            y = y * F.silu(z)
        return F.linear(y, P["out_proj.weight"], P.get("out_proj.bias")), {"conv": conv_state, "ssm": st}

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
            f"ngroups={self.ngroups}, d_state={self.d_state}, chunk_size={self.chunk_size}"
        )
