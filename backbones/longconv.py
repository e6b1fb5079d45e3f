"""Smooth long convolution mixer (pattern symbol ``"C"``) with directly learned kernels.

Paper: "Simple Hardware-Efficient Long Convolutions for Sequence Modeling" (Fu, Epstein,
Nguyen, Thomas, Zhang, Dao, Rudra, Ré, 2023). Instead of generating the convolution kernel
from an SSM, each channel learns its ``l_max`` taps directly. Two simple regularisers keep
such kernels as good as SSM kernels: *squash* (soft-thresholding the taps,
``sign(k) max(|k| - lam, 0)``, which makes them sparse) and *smooth* (an average pool
along the kernel, which suppresses high frequencies). The layer has the S4D block shape:
``y = GLU(Linear(GELU(k * u + D u)))``, with the convolution done by FFT
(``backbones/ops/fftconv.py``). :meth:`LongConv.regularization` returns an optional L1
penalty on the squashed kernel for the training loss.

Streaming: the kernel has ``l_max`` taps (zero beyond), so the state is the last
``l_max - 1`` inputs ``{"hist": (B, D, <= l_max-1)}``; ``step`` costs O(min(t, l_max) D).

Axis legend: b batch, l length, d model width (= channels), k kernel taps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .config import BackboneConfig
from .ops.fftconv import causal_conv_with_history, right_align
from .registry import register_backbone, register_mixer

__all__ = ["LongConv", "longconv_reference"]


@register_mixer("C")
class LongConv(Backbone):
    """Long convolution with learned, squashed and smoothed kernels.

    Args:
        d_model: channels D.
        l_max: kernel taps.
        lam: squash threshold (soft-threshold on the taps); 0 disables.
        smooth_width: odd average-pool width along the kernel; 1 disables.
        init_scale: std of the initial taps (the taps also decay as ``exp(-t/l_max * 4)``).
        dropout: dropout after the activation.
    """

    is_causal = True
    supports_step = True
    supports_state = True

    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        lam: float = 1e-3,
        smooth_width: int = 3,
        init_scale: float = 0.02,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if smooth_width < 1 or smooth_width % 2 == 0:
            raise ValueError(f"smooth_width must be a positive odd number, got {smooth_width}")
        self.d_model, self.l_max = d_model, l_max
        self.lam, self.smooth_width = lam, smooth_width
        decay = torch.exp(-4.0 * torch.arange(l_max) / l_max)  # start with a decaying kernel
        self.kernel_weight = nn.Parameter(torch.randn(d_model, l_max) * init_scale * decay)  # (D, K)
        self.D = nn.Parameter(torch.randn(d_model))
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model)

    def kernel(self) -> Tensor:
        """The effective kernel ``(D, l_max)``: squash then smooth."""
        k = self.kernel_weight.float()
        if self.lam > 0:
            k = torch.sign(k) * F.relu(k.abs() - self.lam)  # squash (soft threshold)
        if self.smooth_width > 1:
            p = self.smooth_width // 2
            k = F.avg_pool1d(k[:, None], self.smooth_width, stride=1, padding=p, count_include_pad=False)[:, 0]
        return k

    def regularization(self, weight: float = 1e-4) -> Tensor:
        """L1 penalty on the effective kernel (add to the loss to encourage sparse, short kernels)."""
        return weight * self.kernel().abs().sum()

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        dev = device if device is not None else self.D.device
        return {"hist": torch.zeros(batch_size, self.d_model, 0, device=dev)}

    def _out(self, y: Tensor) -> Tensor:
        h = self.dropout(F.gelu(y)).to(self.output_linear.weight.dtype)  # computed in fp32, projected in the weights dtype
        return F.glu(self.output_linear(h), dim=-1)

    def forward(self, x: Tensor, state: State = None, *, mask: Tensor | None = None) -> tuple[Tensor, State]:
        B, L, _ = x.shape
        u = x.float().transpose(1, 2)  # (B, D, L)
        hist = None if state is None else state["hist"]
        P = 0 if hist is None else hist.shape[-1]
        y, new_hist = causal_conv_with_history(u, self.kernel(), hist, self.l_max - 1)
        if mask is not None:  # per-row history ending at each row's last valid token
            lengths = lengths_from_mask(mask, B, L, x.device)
            full = u if hist is None else torch.cat([hist.to(u.dtype), u], -1)
            full = right_align(full, lengths + P)
            new_hist = full[..., max(0, full.shape[-1] - (self.l_max - 1)) :]
        y = y + u * self.D.float()[:, None]
        return self._out(y.transpose(1, 2)).to(x.dtype), {"hist": new_hist}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        u = x_t.float()  # (B, D)
        full = torch.cat([state["hist"].to(u.dtype), u[..., None]], -1)  # (B, D, P+1)
        Lh = min(full.shape[-1], self.l_max)
        full = full[..., full.shape[-1] - Lh :]
        y = (full * self.kernel()[:, :Lh].flip(-1)).sum(-1) + self.D.float() * u
        return self._out(y).to(x_t.dtype), {"hist": full[..., max(0, Lh - (self.l_max - 1)) :]}


def longconv_reference(layer: LongConv, x: Tensor) -> Tensor:
    """Float64 direct (O(L K)) evaluation of ``layer`` on ``x`` (B, L, D), for tests."""
    with torch.no_grad():
        u = x.double().transpose(1, 2)  # (B, D, L)
        k = layer.kernel().double()
        L = u.shape[-1]
        y = u * layer.D.double()[:, None]
        for j in range(min(L, k.shape[-1])):
            y[..., j:] += k[:, j, None] * u[..., : L - j]
        W, b = layer.output_linear.weight.double(), layer.output_linear.bias.double()
        return F.glu(F.linear(F.gelu(y.transpose(1, 2)), W, b), dim=-1)


@register_backbone
def test_longconv() -> BackboneConfig:
    """Tiny long-convolution stack for the conformance tests (l_max 32)."""
    return BackboneConfig(d_model=16, n_layers=2, pattern="C", mixer_kwargs={"C": {"l_max": 32}})
