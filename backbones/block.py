"""Pre-norm residual block: ``h + mixer(norm(h))`` then optionally ``h + mlp(norm2(h))``.

The pre-norm residual layout of GPT-2 / LLaMA and of Mamba's ``Block``
(Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023),
with RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019).
Parameter names follow ``mamba_ssm.modules.block.Block`` (``norm``, ``mixer``,
``norm2``, ``mlp``) so converted checkpoints load by name. With
``residual_in_fp32`` the residual stream is kept in float32 (or float64 for float64
inputs) while the mixers compute in the parameters' dtype.

Axis legend: b batch, l length, d model width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, RMSNorm, State

__all__ = ["Block", "residual_dtype"]


def residual_dtype(dtype: torch.dtype, residual_in_fp32: bool) -> torch.dtype:
    """The dtype of the residual stream for inputs of ``dtype``."""
    return torch.promote_types(dtype, torch.float32) if residual_in_fp32 else dtype


class Block(nn.Module):
    """One layer of a stack. ``forward(h, state, mask=)`` maps the residual stream (b, l, d)."""

    def __init__(
        self,
        d_model: int,
        mixer: Backbone,
        mlp: Backbone | None = None,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        if mlp is not None:
            self.norm2 = RMSNorm(d_model, eps=norm_eps)
            self.mlp = mlp
        else:
            self.norm2 = None
            self.mlp = None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _compute_dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def forward(self, h: Tensor, state: State = None, *, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """h (b, l, d) residual stream -> (h (b, l, d), mixer state)."""
        dt = self._compute_dtype()
        y, state = self.mixer(self.norm(h).to(dt), state, mask=mask)
        h = h + self.drop(y).to(h.dtype)
        if self.mlp is not None:
            h = h + self.drop(self.mlp(self.norm2(h).to(dt))[0]).to(h.dtype)
        return h, state

    def step(self, h_t: Tensor, state: State) -> tuple[Tensor, State]:
        """h_t (b, d) -> (h_t (b, d), mixer state) for one token."""
        dt = self._compute_dtype()
        y, state = self.mixer.step(self.norm(h_t).to(dt), state)
        h_t = h_t + y.to(h_t.dtype)
        if self.mlp is not None:
            h_t = h_t + self.mlp.step(self.norm2(h_t).to(dt), None)[0].to(h_t.dtype)
        return h_t, state
