"""Gated MLP (SwiGLU) — the channel mixer after a sequence mixer, or a stateless mixer "G".

Gated linear units with a SiLU gate (Shazeer, "GLU Variants Improve Transformer",
2020), as used by LLaMA and by ``mamba_ssm.modules.mlp.GatedMLP`` whose parameter
names (``fc1`` producing value and gate, ``fc2``) this module keeps. Registered as the
pattern symbol ``"G"`` it acts position-wise with no token mixing at all: a control
layer for ablations (a stack of only "G" layers is a token-wise MLP baseline, in the
spirit of MambaOut's question whether the sequence mixer is needed).

Axis legend: b batch, l length, d model width, f hidden width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, State
from .registry import register_mixer

__all__ = ["GatedMLP"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@register_mixer("G")
class GatedMLP(Backbone):
    """``fc2(act(gate) * value)`` with ``value, gate = fc1(x).chunk(2)``.

    ``d_intermediate`` defaults to ``8/3 * d_model`` rounded up to ``multiple_of``.
    As a mixer it is stateless (state stays ``None``), causal and streamable.
    """

    is_causal = True
    supports_step = True
    supports_state = True
    token_mixing: ClassVar[bool] = False  # position-wise: the stack never wraps it in Bidirectional
    test_kwargs: ClassVar[dict[str, Any]] = {"d_intermediate": 24}

    def __init__(
        self,
        d_model: int,
        d_intermediate: int | None = None,
        multiple_of: int = 128,
        activation: str = "silu",
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        if not d_intermediate:
            d_intermediate = int(8 * d_model / 3)
            d_intermediate = (d_intermediate + multiple_of - 1) // multiple_of * multiple_of
        self.d_model, self.d_intermediate, self.activation = d_model, d_intermediate, activation
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def mlp(self, x: Tensor) -> Tensor:
        """The plain position-wise map ``(..., d) -> (..., d)``."""
        value, gate = self.fc1(x).chunk(2, dim=-1)  # (..., f) each
        return self.fc2(_ACTIVATIONS[self.activation](gate) * value)

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d) -> (y (b, l, d), state unchanged: None)."""
        return self.mlp(x), state

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Stateless: ``None``."""
        return None

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """x_t (b, d) -> (y_t (b, d), state)."""
        return self.mlp(x_t), state
