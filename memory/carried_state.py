"""Carried state: a backbone's own recurrent state threaded across segments.

The simplest streaming memory, and the one a state-space model gets for free: Mamba
(Gu & Dao, 2023) and its relatives compress the whole past into a fixed-size state, so a
long input processed segment by segment with the state passed along (chunked prefill)
gives the same outputs as one pass over the whole input, at constant memory. This module
wraps any :class:`~longstream.backbones.base.Backbone` that supports state passing and exposes that
state through the memory protocol, so the stream runner, truncated back-propagation,
per-row reset and save / restore treat it like every other memory. There is no read
gate: the backbone's state *is* the read path (segment-invariant, tested).

Axis legend: b batch, n segment tokens, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import MemoryState, StreamMemory, backbone_identity


@dataclass
class CarriedState(MemoryState):
    backbone: Any = None  # the backbone's state pytree (None = fresh)
    tokens: Tensor | None = None  # (b,) long: valid tokens seen per row


class CarriedStateMemory(StreamMemory):
    """Wrap ``backbone`` so that its state is the memory (``wraps_backbone``)."""

    name = "carried_state"
    wraps_backbone = True
    segment_invariant = True
    state_cls = CarriedState

    def __init__(self, d_model: int, backbone: nn.Module | None = None) -> None:
        super().__init__(d_model)
        if backbone is None:
            raise TypeError("carried_state memory needs a backbone: create_memory('carried_state', backbone=...)")
        if not getattr(backbone, "supports_state", True):
            raise ValueError(f"{type(backbone).__name__} cannot continue a stream from a state (supports_state=False)")
        self.backbone = backbone

    def config(self) -> dict[str, Any]:
        bb = backbone_identity(self.backbone)
        return {"d_model": self.d_model, "backbone": bb}

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> CarriedState:
        dev = device if device is not None else next(self.parameters()).device
        bstate = self.backbone.init_state(batch_size, device=dev)
        return CarriedState(backbone=bstate, tokens=torch.zeros(batch_size, dtype=torch.long, device=dev))

    def write(self, state: CarriedState, x: Tensor, *, positions=None, frame_ids=None, mask=None) -> CarriedState:
        _, st = self.forward(x, state, mask=mask)
        return st

    def read(self, state: CarriedState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        y, _ = self.backbone(query, state.backbone, mask=mask)
        return y - query

    def forward(  # type: ignore[override]
        self, segment: Tensor, state: CarriedState, *, positions=None, frame_ids=None, mask: Tensor | None = None
    ) -> tuple[Tensor, CarriedState]:
        self._check_input(segment, mask)
        y, bstate = self.backbone(segment, state.backbone, mask=mask)  # (b, n, d)
        n_valid = segment.shape[1] if mask is None else mask.long().sum(-1)
        tokens = state.tokens + n_valid if state.tokens is not None else None
        return y, CarriedState(segments=state.segments + 1, backbone=bstate, tokens=tokens)
