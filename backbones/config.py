"""Backbone stack configuration (a dataclass; presets are functions in ``presets.py``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BackboneConfig:
    """Describes a stack of pre-norm residual blocks.

    ``pattern`` lists mixer symbols separated by commas, each optionally repeated with
    ``*k`` (``"M*7,A"`` = seven Mamba layers then one attention layer). A pattern with
    no commas is read symbol by symbol, longest symbol first (``"MMMA"``, ``"M2M2A"``).
    The pattern is repeated (and truncated) to ``n_layers``.
    ``mixer_kwargs`` maps a symbol to keyword arguments of that mixer's constructor.
    """

    d_model: int = 256
    n_layers: int = 4
    pattern: str = "M"
    mixer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    d_intermediate: int = 0  # gated-MLP width after each mixer; 0 = no MLP (Mamba style)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    final_norm: bool = True
    bidirectional: bool = False  # wrap each mixer in a forward + reversed pass
    bidirectional_merge: str = "add"  # "add" or "proj"
    # Caduceus-PS reverse-complement equivariance (backbones/caduceus.py): the layers run at
    # d_model // 2 on the first channel half and, with the same weights, on the reverse
    # complement of the second half; f(RC(x)) == RC(f(x)) with RC(h) = h.flip(length, channels)
    rc_equivariant: bool = False
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
