"""Mamba mixer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023).

The input is projected to a stream ``x`` and a gate ``z``; ``x`` goes through a short causal
depthwise conv + SiLU, then a *selective* diagonal SSM whose step ``dt`` and projections
``B, C`` depend on the token; the result is gated by ``silu(z)`` and projected back.
Parameter names are those of ``mamba_ssm.modules.mamba_simple.Mamba`` (``in_proj``,
``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) so checkpoints of
state-spaces/mamba-* load by name, and the initialisation follows the paper (S4D-real
``A``, ``dt`` log-uniform in [dt_min, dt_max] through an inverse-softplus bias).

The computation is time-major (b, l, e) end to end: no transposes around the conv or the
scan. On CPU the conv and scan run in the compiled kernels of ``longstream.backbones.ops`` when they
are built, on CUDA in ``mamba_ssm`` / ``causal_conv1d`` when they import, and in pure
PyTorch otherwise. State: ``{"conv": (b, e, k-1), "ssm": (b, e, n)}``, float32.

Axis legend: b batch, l length, d model width, e inner width (expand * d), n state size,
r dt rank, k conv width.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .ops import bigbuf, cpu_kernels
from .ops.causal_conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from .ops.selective_scan import selective_scan, selective_scan_ref
from .registry import register_mixer

__all__ = ["Mamba", "init_dt_bias"]


def init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> Tensor:
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (inverse softplus of a sample)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^{-1}(dt)


# weights below this many bytes are multiplied single-threaded in a decode step: a threaded GEMV's
# hand-offs cost more than the product itself (and far more on a loaded machine)
SMALL_GEMV_BYTES = 4 << 20


def _decode_linear(x: Tensor, lin: nn.Linear) -> Tensor:
    """x (b, i) float32 -> lin(x) (b, o): the compiled single-threaded GEMV for small weights."""
    w = lin.weight
    if w.numel() * 4 < SMALL_GEMV_BYTES and w.shape[1] % 8 == 0 and cpu_kernels.has_op("linear_rows"):
        b = lin.bias if lin.bias is not None else w.new_empty(0)
        return cpu_kernels.ops().linear_rows(x.contiguous(), w, b)
    return F.linear(x, w, lin.bias)


class _InProjFn(torch.autograd.Function):
    """``in_proj`` split into its stream and gate halves, (..., d) -> (..., e), (..., e), both
    contiguous pooled buffers. Backward: the input gradient is ``g_x @ W_x + g_z @ W_z`` formed in
    one pooled buffer (a GEMM and an in-place ``addmm_``), not two GEMM outputs and an add."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, e: int):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])  # (m, d)
        outs = []
        for lo in (0, e):
            o = bigbuf.empty(x2.shape[0], e, dtype=x.dtype, device=x.device)  # (m, e)
            bigbuf._mm_bias(x2, w[lo : lo + e].t(), None if b is None else b[lo : lo + e], o)
            outs.append(o.view(*x.shape[:-1], e))
        ctx.save_for_backward(x, w)
        ctx.e, ctx.has_bias = e, b is not None
        return outs[0], outs[1]

    @staticmethod
    def backward(ctx, gxi: Tensor | None, gz: Tensor | None):  # type: ignore[override]
        x, w = ctx.saved_tensors
        e = ctx.e
        x2 = x.reshape(-1, x.shape[-1])  # (m, d)
        gs = [None if g is None else g.reshape(-1, e) for g in (gxi, gz)]  # (m, e) each
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = bigbuf.empty(*x2.shape, dtype=x.dtype, device=x.device)  # (m, d)
            first = True
            for g, lo in zip(gs, (0, e)):
                if g is None:
                    continue
                bigbuf.gemm(g, w[lo : lo + e], gx, beta=0.0 if first else 1.0)
                first = False
            if first:
                gx.zero_()
            gx = gx.view(*x.shape)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(w) if any(g is None for g in gs) else torch.empty_like(w)  # (2e, d)
            for g, lo in zip(gs, (0, e)):
                if g is not None:
                    bigbuf.gemm(g.t(), x2, gw[lo : lo + e])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.cat([g.sum(0) if g is not None else w.new_zeros(e) for g in gs])
        return gx, gw, gb, None


@register_mixer("M")
class Mamba(Backbone):
    """Selective SSM mixer, (b, l, d) -> (b, l, d), streamable with O(1) state per token."""

    is_causal: ClassVar[bool] = True
    supports_step: ClassVar[bool] = True
    supports_state: ClassVar[bool] = True
    test_kwargs: ClassVar[dict[str, Any]] = {"d_state": 4}

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        self.backend = backend
        e, n, r = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, d_model, bias=bias)
        # dt projection: weights ~ U(-s, s) with s = dt_scale / sqrt(r); bias = softplus^-1(dt)
        std = r**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(e, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        # S4D-real initialisation: A[e, n] = -(n + 1)
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1)  # (e, n)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(e))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ helpers
    def _in(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (..., d) -> stream, gate (..., e), each contiguous (two GEMMs on in_proj's halves;
        large outputs in pooled buffers, see ``ops/bigbuf.py``). In training the two halves
        share one autograd node whose input gradient is one pooled buffer (``_InProjFn``)."""
        w, b, e = self.in_proj.weight, self.in_proj.bias, self.d_inner
        if (
            torch.is_grad_enabled()
            and (x.requires_grad or w.requires_grad)
            and x.dtype == w.dtype == torch.float32
            and (b is None or b.dtype == torch.float32)
            and bigbuf._own_gemm(x, x.numel() // max(1, x.shape[-1]) * e * 4)
        ):
            return _InProjFn.apply(x, w, b, e)
        xi = bigbuf.linear(x, w[:e], None if b is None else b[:e])
        z = bigbuf.linear(x, w[e:], None if b is None else b[e:])
        return xi, z

    def _ssm_params(self, u: Tensor, raw: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """u (..., e) -> dt (..., e) positive, B (..., n), C (..., n).

        With ``raw`` the returned dt is ``dt_proj.weight @ dt_low`` before bias and softplus."""
        r, n = self.dt_rank, self.d_state
        x_dbl = bigbuf.linear(u, self.x_proj.weight)  # (..., r + 2n)
        dt_low, B, C = torch.split(x_dbl, [r, n, n], dim=-1)
        if raw:
            return bigbuf.linear(dt_low, self.dt_proj.weight), B, C
        dt = F.softplus(F.linear(dt_low, self.dt_proj.weight, self.dt_proj.bias).float())
        return dt, B, C

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight[:, 0, :]  # (e, k)

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero conv window (b, e, k-1) and SSM state (b, e, n), float32."""
        device = device if device is not None else self.A_log.device
        e = self.d_inner
        return {
            "conv": torch.zeros(batch_size, e, self.d_conv - 1, device=device),
            "ssm": torch.zeros(batch_size, e, self.d_state, device=device),
        }

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d) -> (y (b, l, d), state after each row's last valid token)."""
        b, l, _ = x.shape
        if state is None:
            state = self.init_state(b, device=x.device)
        lengths = None if mask is None or bool(mask.all()) else lengths_from_mask(mask, b, l, x.device)
        xi, z = self._in(x)  # (b, l, e) each
        u, conv_state = causal_conv1d(
            xi, self._conv_weight(), self.conv1d.bias, state["conv"], "silu", lengths=lengths, backend=self.backend
        )
        A = -torch.exp(self.A_log.float())  # (e, n)
        if lengths is None:  # bias + softplus inside the scan (fused into the CPU kernel at inference)
            dt, B, C = self._ssm_params(u, raw=True)
            y, ssm_state = selective_scan(
                u, dt, A, B, C, self.D, z, self.dt_proj.bias, True, state["ssm"],
                chunk_size=self.chunk_size, backend=self.backend,
            )
        else:  # dt = 0 on padding: decay 1, input 0, the state passes through
            dt, B, C = self._ssm_params(u)
            dt = dt * mask[:, :, None].to(dt.dtype)
            y, ssm_state = selective_scan(
                u, dt, A, B, C, self.D, z, initial_state=state["ssm"], chunk_size=self.chunk_size, backend=self.backend
            )
        out = bigbuf.linear(y.to(x.dtype), self.out_proj.weight, self.out_proj.bias)  # (b, l, d)
        return out, {"conv": conv_state, "ssm": ssm_state.float()}

    def _step_consts(self) -> tuple[Tensor, ...]:
        """Parameter-derived tensors of the fused decode step, cached until a parameter changes:
        conv weight (e, k), conv bias (e), dt_proj weight transposed (r, e), A = -exp(A_log) (e, n),
        and for ``lm_step`` x_proj weight transposed (e, r + 2n) and dt_proj weight (e, r), contiguous
        (each block of channels then reads one contiguous slab of both)."""
        params = (self.conv1d.weight, self.conv1d.bias, self.dt_proj.weight, self.A_log, self.x_proj.weight)
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = getattr(self, "_step_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                consts = (
                    self._conv_weight().detach().contiguous(),
                    self.conv1d.bias.detach().contiguous(),
                    self.dt_proj.weight.detach().t().contiguous(),
                    (-torch.exp(self.A_log.detach())).contiguous(),
                    self.x_proj.weight.detach().t().contiguous(),
                    self.dt_proj.weight.detach().contiguous(),
                )
            cached = (key, consts)
            self._step_cache = cached
        return cached[1]

    def _step_fused(self, x_t: Tensor, state: State) -> bool:
        """The compiled one-call step applies: float32 CPU, no autograd, widths multiple of 8."""
        return (
            x_t.dtype == torch.float32
            and x_t.device.type == "cpu"
            and self.A_log.dtype == torch.float32
            and self.in_proj.weight.dtype == torch.float32
            and self.conv1d.bias is not None
            and self.d_inner % 8 == 0
            and self.d_state % 8 == 0
            and self.backend in ("auto", "cpp")
            and not (torch.is_grad_enabled() and any(p.requires_grad for p in (self.A_log, self.in_proj.weight)))
            and state["ssm"].dtype == torch.float32
            and state["conv"].dtype == torch.float32
            and cpu_kernels.has_op("mamba_step")
        )

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (b, d) -> (y_t (b, d), new state): one token in O(e n).

        On CPU (float32, no autograd) the work between in_proj and out_proj is one compiled call
        (``torch.ops.longstream_ops.mamba_step``); the input state is never modified."""
        if self._step_fused(x_t, state):
            lin = getattr(self, "_lowp_linears", None)  # set by LanguageModel.quantize
            xz = lin[0](x_t) if lin is not None else _decode_linear(x_t, self.in_proj)  # (b, 2e)
            conv_w, conv_b, dtw_t, A = self._step_consts()[:4]
            y, conv_state, h = cpu_kernels.ops().mamba_step(
                xz.contiguous(), state["conv"].contiguous(), conv_w, conv_b, self.x_proj.weight,
                dtw_t, self.dt_proj.bias, A, self.D, state["ssm"].contiguous(),
            )  # y (b, e), conv (b, e, k-1), ssm (b, e, n)
            out = lin[1](y) if lin is not None else _decode_linear(y, self.out_proj)
            return out, {"conv": conv_state, "ssm": h}
        xi, z = self._in(x_t)  # (b, e)
        u, conv_state = causal_conv1d_update(xi, state["conv"], self._conv_weight(), self.conv1d.bias, "silu")
        dt, B, C = self._ssm_params(u)  # (b, e), (b, n), (b, n)
        A = -torch.exp(self.A_log.float())
        uf = u.float()
        h = state["ssm"] * torch.exp(dt[:, :, None] * A) + (dt * uf)[:, :, None] * B.float()[:, None, :]  # (b, e, n)
        y = torch.bmm(h, C.float()[:, :, None])[..., 0] + self.D.float() * uf  # (b, e)
        y = y * F.silu(z.float())
        return self.out_proj(y.to(x_t.dtype)), {"conv": conv_state, "ssm": h}

    # ------------------------------------------------------------------ reference
    def reference(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """The same layer in float64 with the sequential references of ``longstream.backbones.ops``."""
        p = {k: v.detach().double() for k, v in self.named_parameters()}
        x = x.double()
        e, n = self.d_inner, self.d_state
        xz = F.linear(x, p["in_proj.weight"], p.get("in_proj.bias"))
        xi, z = xz[..., :e], xz[..., e:]
        conv = None if state is None else state["conv"]
        u, conv_state = causal_conv1d_ref(xi, p["conv1d.weight"][:, 0], p.get("conv1d.bias"), conv, "silu")
        x_dbl = F.linear(u, p["x_proj.weight"])
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, n, n], dim=-1)
        dt = F.linear(dt_low, p["dt_proj.weight"], p["dt_proj.bias"])
        h0 = None if state is None else state["ssm"]
        y, h = selective_scan_ref(u, dt, -torch.exp(p["A_log"]), B, C, p["D"], z, None, True, h0)
        return F.linear(y, p["out_proj.weight"], p.get("out_proj.bias")), {"conv": conv_state, "ssm": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"
