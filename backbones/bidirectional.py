"""Bidirectional wrapper: a forward pass plus a pass over each row reversed, merged.

The bidirectional scheme of Vision Mamba (Zhu et al., "Vision Mamba: Efficient Visual
Representation Learning with Bidirectional State Space Model", 2024) and Caduceus
(Schiff et al., "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence
Modeling", 2024): any causal mixer is run once left-to-right and once right-to-left,
and the two outputs are added (or concatenated and projected). Reversal is done per
row *within its valid length*, so right-padded batches give the same outputs at valid
positions as unpadded runs: the padding stays at the end of the reversed row, where a
causal mixer never looks at it.

The backward direction has its own parameters by default (Vision Mamba); pass the same
module twice (or ``shared=True`` to :meth:`Bidirectional.build`) to tie them.

Cost beyond the two passes: one reversal of the input and one fused "reverse and add" of the
output (each one pass over (b, l, d) into a pooled buffer, ``ops/bigbuf.py``), and the same
two reversals in the backward; ``benchmarks/backbones.py`` times it against one causal pass.

Axis legend: b batch, l length, d model width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Backbone, State, lengths_from_mask
from .ops import bigbuf

__all__ = ["Bidirectional", "reverse_within_length"]


def reverse_index(lengths: Tensor, length: int) -> Tensor:
    """(b, l) gather index reversing positions ``< lengths[b]`` and fixing the rest."""
    t = torch.arange(length, device=lengths.device)[None, :]  # (1, l)
    n = lengths[:, None]  # (b, 1)
    return torch.where(t < n, n - 1 - t, t)  # (b, l)


def _flip1(x: Tensor) -> Tensor:
    """x (b, l, ...) reversed along l into a fresh contiguous (pooled) tensor."""
    idx = torch.arange(x.shape[1] - 1, -1, -1, device=x.device)
    return torch.index_select(x, 1, idx, out=bigbuf.empty_like(x))


class _Reverse(torch.autograd.Function):
    """x (b, l, ...) -> x reversed along l; the backward reverses the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _flip1(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return _flip1(g)


class _AddReversed(torch.autograd.Function):
    """(y_f, y_r) (b, l, d) each -> y_f + reverse(y_r) in one output buffer (no reversed copy)."""

    @staticmethod
    def forward(ctx, y_f: Tensor, y_r: Tensor) -> Tensor:  # type: ignore[override]
        return _flip1(y_r).add_(y_f)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return g, _flip1(g)


def reverse_within_length(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reverse x (b, l, ...) along l within each row's valid length (right padding)."""
    b, l = x.shape[:2]
    if mask is None:
        return _Reverse.apply(x) if x.dim() >= 2 and x.device.type == "cpu" else x.flip(1)
    idx = reverse_index(lengths_from_mask(mask, b, l, x.device), l)
    idx = idx.view(b, l, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class Bidirectional(Backbone):
    """``merge(fwd(x), reverse(bwd(reverse(x))))`` with ``merge`` "add" or "proj"."""

    is_causal = False
    supports_step = False
    supports_state = False

    def __init__(self, fwd: Backbone, bwd: Backbone | None = None, merge: str = "add") -> None:
        super().__init__()
        if merge not in ("add", "proj"):
            raise ValueError(f"bidirectional merge must be 'add' or 'proj', got {merge!r}")
        self.d_model = fwd.d_model
        self.fwd = fwd
        self.bwd = None if bwd is fwd else bwd  # None: the backward pass shares ``fwd``
        self.merge = merge
        self.proj = nn.Linear(2 * self.d_model, self.d_model, bias=False) if merge == "proj" else None

    @classmethod
    def build(
        cls, mixer_cls: type, d_model: int, merge: str = "add", shared: bool = False, **kwargs: Any
    ) -> Bidirectional:
        """Wrap two (or, with ``shared``, one) ``mixer_cls(d_model, **kwargs)``."""
        fwd = mixer_cls(d_model, **kwargs)
        return cls(fwd, fwd if shared else mixer_cls(d_model, **kwargs), merge=merge)

    def forward(  # type: ignore[override]
        self, x: Tensor, state: State = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (b, l, d), right-padded mask (b, l) -> (y (b, l, d), None)."""
        if state is not None:
            raise ValueError("a Bidirectional mixer sees the whole sequence; it takes no state")
        if mask is not None and bool(mask.all()):
            mask = None
        y_f, _ = self.fwd(x, None, mask=mask)
        x_r = reverse_within_length(x, mask)
        y_r, _ = (self.bwd if self.bwd is not None else self.fwd)(x_r, None, mask=mask)
        if self.proj is None and mask is None and y_r.device.type == "cpu" and y_r.dtype == y_f.dtype:
            return _AddReversed.apply(y_f, y_r), None  # y_f + reverse(y_r), one pass
        y_b = reverse_within_length(y_r, mask)  # back to the original order
        if self.proj is None:
            return y_f + y_b, None
        return self.proj(torch.cat([y_f, y_b], dim=-1)), None

    def init_state(self, batch_size: int, **_: Any) -> State:
        raise NotImplementedError("a Bidirectional mixer is not streamable (no state)")

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError("a Bidirectional mixer is not streamable (no step)")
