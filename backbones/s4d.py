"""S4D mixer (pattern symbol ``"S"``): a diagonal state-space layer.

Paper: "On the Parameterization and Initialization of Diagonal State Space Models"
(Gu, Gupta, Goel, Ré, 2022). Each of the D channels owns N/2 complex modes
``A_n = -exp(log_A_real_n) + i A_imag_n`` (S4D-Lin: ``-1/2 + i pi n``; S4D-Inv:
``-1/2 + i N/pi (N/(2n+1) - 1)``), a step ``dt = exp(log_dt)`` and an output vector
``C``. Zero-order hold gives ``dA = exp(dt A)``, ``dB = (dA - 1)/A``; the layer's
convolution kernel is the Vandermonde product ``K[l] = 2 Re(sum_n C_n dB_n dA_n^l)``
(conjugate modes fold into the factor 2). Sequences run chunked (``ops.diag_ssm``: the
convolution with K inside chunks of ~2N tokens as a Toeplitz matmul, the state passed
between chunks; O(L) memory, no FFT, equal to the FFT convolution with K);
streaming uses the recurrence ``x_t = dA x_{t-1} + dB u_t``, ``y_t = 2 Re(C x_t) + D u_t``.
As in the paper's reference code the SSM output goes through GELU and a GLU output
projection (``Linear(D, 2D)`` + GLU). A chunk continued from a state adds the free
response of that state and returns the state after the chunk (complex, stored as a float32
``(..., 2)`` real view), so chunked prefill, ``step`` and one full forward agree.

Axis legend: b batch, l length, d model width (= SSM channels h), n complex modes (N/2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .config import BackboneConfig
from .ops import bigbuf, cpu_kernels
from .ops.diag_ssm import diag_ssm_chunked
from .ops.fftconv import right_align, ssm_final_state, ssm_kernel
from .registry import register_backbone, register_mixer

__all__ = ["S4D", "s4d_reference"]


@register_mixer("S")
class S4D(Backbone):
    """Diagonal SSM layer: FFT convolution for sequences, recurrence for ``step``.

    Args:
        d_model: channels D (one SSM per channel).
        d_state: state size N (N/2 complex modes per channel).
        init: ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv) imaginary parts.
        dt_min, dt_max: range of the log-uniform initial step.
        dropout: dropout after the activation.
    """

    is_causal = True
    supports_step = True
    supports_state = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_state % 2:
            raise ValueError(f"S4D d_state must be even (N/2 complex modes), got {d_state}")
        self.d_model = d_model
        self.d_state = d_state
        H, N2 = d_model, d_state // 2
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        n = torch.arange(N2, dtype=torch.float32)
        if init == "lin":
            a_imag = math.pi * n
        elif init == "inv":
            a_imag = (d_state / math.pi) * (d_state / (2 * n + 1) - 1)
        else:
            raise ValueError(f"S4D init must be 'lin' or 'inv', got {init!r}")
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N2)))  # (H, N/2)
        self.A_imag = nn.Parameter(a_imag.repeat(H, 1))  # (H, N/2)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N2, dtype=torch.cfloat) * math.sqrt(0.5)))
        self.D = nn.Parameter(torch.randn(H))
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(H, 2 * H)

    # ---- discretisation -------------------------------------------------------------
    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH: ``(log dA (H, N/2), dB (H, N/2), C (H, N/2))``, all complex64."""
        dt = torch.exp(self.log_dt.float())  # (H,)
        A = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())  # (H, N/2)
        dtA = A * dt[:, None]
        dB = torch.expm1(dtA) / A  # (exp(dt A) - 1) / A
        return dtA, dB, torch.view_as_complex(self.C.float().contiguous())

    def kernel(self, length: int) -> Tensor:
        """Convolution kernel ``(H, length)``: ``2 Re(C dB dA^l)``."""
        log_dA, dB, C = self.discrete()
        return ssm_kernel(2 * C * dB, log_dA, length)

    # ---- Backbone protocol ---------------------------------------------------------
    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        dev = device if device is not None else self.D.device
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, device=dev)}

    def _ssm(self, u: Tensor, x0: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """SSM part on channels-first ``u`` (B, H, L): ``(y (B, H, L), state (B, H, N/2) complex)``.

        Chunked (:func:`~.ops.diag_ssm.diag_ssm_chunked`): O(B H L (T + 2N)) in matmuls, memory
        linear in L; equal to the FFT convolution with :meth:`kernel` plus the free response.
        """
        B, H, L = u.shape
        log_dA, dB, C = self.discrete()
        y, x = diag_ssm_chunked(u, log_dA, dB, 2 * C, x0, skip=self.D.float())  # (B, H, L), (B, H, N/2)
        if lengths is not None:  # state after each row's last valid token: right-align the rows
            x = ssm_final_state(right_align(u, lengths), dB, log_dA)
            if x0 is not None:
                x = x + x0 * torch.exp(log_dA[None] * lengths.view(B, 1, 1).to(log_dA.real.dtype))
        return y, x

    def _out(self, y: Tensor) -> Tensor:
        """GELU -> dropout -> Linear(D, 2D) -> GLU on channels-last ``y``."""
        h = self.dropout(F.gelu(y)).to(self.output_linear.weight.dtype)  # computed in fp32, projected in the weights dtype
        return F.glu(bigbuf.linear(h, self.output_linear.weight, self.output_linear.bias), dim=-1)  # pooled, oneDNN

    def forward(self, x: Tensor, state: State = None, *, mask: Tensor | None = None) -> tuple[Tensor, State]:
        B, L, _ = x.shape
        lengths = None if mask is None else lengths_from_mask(mask, B, L, x.device)
        x0 = None if state is None else torch.view_as_complex(state["ssm"].float().contiguous())
        u = x.float().transpose(1, 2).contiguous()  # (B, H, L); contiguous: rfft of a strided view is ~3x slower
        y, xs = self._ssm(u, x0, lengths)
        out = self._out(y.transpose(1, 2)).to(x.dtype)  # (B, L, D)
        return out, {"ssm": torch.view_as_real(xs).float()}

    def _step_consts(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(dA (H, N/2, 2), dB (H, N/2, 2), [Re 2C, -Im 2C] (H, N/2, 2), D (H,))`` (re, im pairs) for
        ``step``; cached (no autograd) until a parameter changes (in place or replaced)."""
        params = (self.log_dt, self.log_A_real, self.A_imag, self.C, self.D)
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        cached = getattr(self, "_step_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            log_dA, dB, C = self.discrete()
            c2 = torch.view_as_real(2 * C)  # (H, N/2, 2)
            consts = (torch.view_as_real(torch.exp(log_dA)).contiguous(), torch.view_as_real(dB).contiguous(),
                      torch.stack([c2[..., 0], -c2[..., 1]], -1).contiguous(), self.D.float().contiguous())
        self._step_cache = (key, consts)
        return consts

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (B, H) -> (y_t (B, H), new state): ``x = dA x + dB u``, ``y = 2 Re(C x) + D u``.

        Without autograd the discretisation is cached (:meth:`_step_consts`); with it, it is
        recomputed so gradients reach the parameters."""
        u = x_t.float()  # (B, H)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            log_dA, dB, C = self.discrete()
            xs = torch.view_as_complex(state["ssm"].float().contiguous())  # (B, H, N/2)
            xs = torch.exp(log_dA) * xs + dB * u[..., None]
            y = 2 * (xs * C).sum(-1).real + self.D.float() * u  # (B, H)
            return self._out(y).to(x_t.dtype), {"ssm": torch.view_as_real(xs).float()}
        dA, dB, c2, D = self._step_consts()  # (H, N/2, 2) x3, (H,)
        st = state["ssm"].float().contiguous()  # (B, H, N/2, 2)
        if u.device.type == "cpu" and cpu_kernels.has_op("s4d_step"):  # one compiled call (+ GELU)
            fuse_gelu = not (self.training and self.dropout.p > 0)
            y, st = cpu_kernels.ops().s4d_step(u.contiguous(), st, dA, dB, c2, D, fuse_gelu)
            if fuse_gelu:
                return F.glu(self.output_linear(y.to(self.output_linear.weight.dtype)), dim=-1).to(x_t.dtype), {"ssm": st}
            return self._out(y).to(x_t.dtype), {"ssm": st}
        xs = torch.view_as_complex(st)
        xs = torch.addcmul(torch.view_as_complex(dB) * u[..., None], torch.view_as_complex(dA), xs)  # (B, H, N/2)
        y = torch.addcmul((torch.view_as_real(xs) * c2).sum((-1, -2)), D, u)  # 2 Re(C x) + D u
        return self._out(y).to(x_t.dtype), {"ssm": torch.view_as_real(xs).float()}


def s4d_reference(layer: S4D, x: Tensor, state: State = None) -> tuple[Tensor, Tensor]:
    """Float64 sequential recurrence of ``layer`` (the reference the FFT path is tested against).

    Returns ``(y (B, L, D) float64, final state (B, D, N/2) complex128)``.
    """
    with torch.no_grad():
        dt = torch.exp(layer.log_dt.double())
        A = torch.complex(-torch.exp(layer.log_A_real.double()), layer.A_imag.double())
        dA = torch.exp(A * dt[:, None])
        dB = (dA - 1) / A
        C = torch.view_as_complex(layer.C.double().contiguous())
        B, L, H = x.shape
        xs = (
            torch.zeros(B, H, layer.d_state // 2, dtype=torch.complex128)
            if state is None
            else torch.view_as_complex(state["ssm"].double().contiguous())
        )
        ys = []
        for t in range(L):
            u = x[:, t].double()
            xs = dA * xs + dB * u[..., None]
            ys.append(2 * (xs * C).sum(-1).real + layer.D.double() * u)
        y = torch.stack(ys, 1)  # (B, L, H)
        W, b = layer.output_linear.weight.double(), layer.output_linear.bias.double()
        return F.glu(F.linear(F.gelu(y), W, b), dim=-1), xs


@register_backbone
def test_s4d() -> BackboneConfig:
    """Tiny S4D stack for the conformance tests."""
    kw: dict[str, Any] = {"d_state": 8}
    return BackboneConfig(d_model=16, n_layers=2, pattern="S", mixer_kwargs={"S": kw})


@register_backbone
def s4d_base() -> BackboneConfig:
    """A 256-wide, 6-layer S4D stack (S4D-Lin, N = 64) with a gated MLP after each layer."""
    return BackboneConfig(d_model=256, n_layers=6, pattern="S", d_intermediate=512, mixer_kwargs={"S": {"d_state": 64}})
