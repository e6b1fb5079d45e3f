"""Time-series encoders: multivariate windows -> token streams for a sequence backbone.

Building blocks used by long-term forecasters:

- :class:`RevIN` — reversible instance normalisation (Kim et al., "Reversible Instance
  Normalization for Accurate Time-Series Forecasting against Distribution Shift",
  ICLR 2022): each window is normalised by its own per-variable mean / std before the
  model and the forecast is de-normalised with the same statistics.
- :class:`PatchTokens` — channel-independent patch tokens (Nie et al., "A Time Series is
  Worth 64 Words: Long-term Forecasting with Transformers", PatchTST, ICLR 2023): every
  variable is cut into overlapping patches, one token per patch, variables folded into
  the batch.
- :class:`VariateTokens` — one token per variable embedding its whole input window
  (Liu et al., "iTransformer: Inverted Transformers Are Effective for Time Series
  Forecasting", ICLR 2024; Wang et al., "Is Mamba Effective for Time Series
  Forecasting?", S-Mamba, 2024). The backbone then mixes *variables*, not time steps.
- :class:`TimeTokens` — channel-independent time tokens: one token per time step and
  variable (the plain "sequence model over time" view).
- :class:`CycleBasis` — a learnable periodic component per variable, indexed by the
  phase of each window (Lin et al., "CycleNet: Enhancing Time Series Forecasting through
  Modeling Periodic Patterns", NeurIPS 2024, residual cycle forecasting).

Axis legend: b batch, l input length (time steps), c variables (channels),
d model width, n patches per variable, p patch length, h forecast horizon.
All inputs are ``(B, L, C)`` float tensors (time major, like a CSV).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "RevIN",
    "RevINStats",
    "patchify",
    "PatchTokens",
    "VariateTokens",
    "TimeTokens",
    "CycleBasis",
]

RevINStats = tuple[Tensor, Tensor]  # (mean (B, 1, C), std (B, 1, C))


class RevIN(nn.Module):
    """Reversible instance normalisation over the time axis of ``(B, L, C)`` windows.

    ``normalize`` returns the normalised window and the per-window statistics;
    ``denormalize`` maps a model output ``(B, H, C, ...)`` back to the input scale with
    those statistics. With ``affine=True`` a learnable per-variable scale and shift is
    applied after normalisation (and removed before de-normalisation), as in the paper.
    The module keeps no per-call state, so it is safe under re-entrancy and DDP.
    """

    def __init__(self, n_vars: int, *, affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_vars = n_vars
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(n_vars))
            self.bias = nn.Parameter(torch.zeros(n_vars))

    def normalize(self, x: Tensor) -> tuple[Tensor, RevINStats]:
        """``x`` (B, L, C) -> (normalised x, (mean, std)) with stats of shape (B, 1, C)."""
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        y = (x - mean) / std
        if self.affine:
            y = y * self.weight + self.bias
        return y, (mean, std)

    def denormalize(self, y: Tensor, stats: RevINStats) -> Tensor:
        """Invert :meth:`normalize` on ``y`` (B, H, C) or (B, H, C, Q)."""
        mean, std = stats
        extra = y.dim() - 3  # trailing axes (e.g. quantiles) broadcast over the stats
        if extra:
            mean = mean.reshape(*mean.shape, *([1] * extra))
            std = std.reshape(*std.shape, *([1] * extra))
        if self.affine:
            w = self.weight.reshape(-1, *([1] * extra))
            b = self.bias.reshape(-1, *([1] * extra))
            y = (y - b) / (w + self.eps * self.eps)
        return y * std + mean

    def forward(self, x: Tensor) -> tuple[Tensor, RevINStats]:  # pragma: no cover - alias
        return self.normalize(x)


def patchify(x: Tensor, patch_len: int, stride: int, *, pad_end: bool = True) -> Tensor:
    """Cut ``x`` (B, L, C) into patches ``(B, C, N, P)`` along time.

    With ``pad_end`` the last value is repeated ``stride`` times first (PatchTST's
    replication padding), giving ``N = (L - P) // S + 2`` patches.
    """
    if x.dim() != 3:
        raise ValueError(f"patchify expects (B, L, C), got shape {tuple(x.shape)}")
    xt = x.transpose(1, 2)  # (b, c, l)
    if pad_end:
        xt = torch.cat([xt, xt[..., -1:].expand(*xt.shape[:-1], stride)], dim=-1)
    if xt.shape[-1] < patch_len:
        raise ValueError(f"input length {x.shape[1]} is shorter than patch_len {patch_len}")
    return xt.unfold(-1, patch_len, stride)  # (b, c, n, p)


def n_patches(seq_len: int, patch_len: int, stride: int, *, pad_end: bool = True) -> int:
    """Number of patches :func:`patchify` produces for a window of ``seq_len``."""
    return (seq_len + (stride if pad_end else 0) - patch_len) // stride + 1


class PatchTokens(nn.Module):
    """Channel-independent patch tokens: ``(B, L, C) -> (B*C, N, D)`` (PatchTST).

    Each patch of ``patch_len`` values is linearly embedded and a learned positional
    embedding added. Variables are folded into the batch, so the same backbone weights
    serve every variable.
    """

    def __init__(self, seq_len: int, patch_len: int, stride: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = n_patches(seq_len, patch_len, stride)
        self.proj = nn.Linear(patch_len, d_model)
        self.pos = nn.Parameter(torch.randn(self.n_patches, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        p = patchify(x, self.patch_len, self.stride)  # (b, c, n, p)
        b, c, n, _ = p.shape
        tok = self.proj(p) + self.pos  # (b, c, n, d)
        return self.drop(tok.reshape(b * c, n, -1))


class VariateTokens(nn.Module):
    """Variate tokens: each variable's whole window is one token, ``(B, L, C) -> (B, C, D)``.

    ``n_marks`` extra covariate series (calendar features, exogenous inputs) passed as
    ``marks`` (B, L, M) become M additional tokens, as in iTransformer; the forecasting
    head reads only the first C tokens.
    """

    def __init__(self, seq_len: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(seq_len, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, marks: Tensor | None = None) -> Tensor:
        xt = x.transpose(1, 2)  # (b, c, l)
        if marks is not None:
            xt = torch.cat([xt, marks.transpose(1, 2)], dim=1)  # (b, c + m, l)
        return self.drop(self.proj(xt))  # (b, c(+m), d)


class TimeTokens(nn.Module):
    """Channel-independent time tokens: one token per step, ``(B, L, C) -> (B*C, L, D)``."""

    def __init__(self, seq_len: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(1, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, l, c = x.shape
        xt = x.transpose(1, 2).reshape(b * c, l, 1)  # (b*c, l, 1)
        return self.drop(self.proj(xt) + self.pos[:l])


class CycleBasis(nn.Module):
    """A learnable cycle of ``period`` steps per variable (CycleNet's recurrent cycle).

    ``forward(phase, length)`` returns ``(B, length, C)``: the cycle read from each
    window's starting phase ``phase`` (B,) (an integer in ``[0, period)``), wrapping
    around. A forecaster subtracts it from the input window and adds the continuation
    to its forecast, so the backbone only models the residual.
    """

    def __init__(self, period: int, n_vars: int) -> None:
        super().__init__()
        if period < 1:
            raise ValueError(f"cycle period must be >= 1, got {period}")
        self.period = period
        self.data = nn.Parameter(torch.zeros(period, n_vars))

    def forward(self, phase: Tensor, length: int) -> Tensor:
        steps = torch.arange(length, device=phase.device)
        idx = (phase.long().view(-1, 1) + steps.view(1, -1)) % self.period  # (b, length)
        return self.data[idx]  # (b, length, c)
