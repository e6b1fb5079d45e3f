"""Compressive memory bank: merge the most similar adjacent entries to stay in budget.

He et al., "MA-LMM: Memory-Augmented Large Multimodal Model for Long-Term Video
Understanding" (CVPR 2024), memory bank compression. Past features are appended to a
bank in temporal order; whenever the bank exceeds its budget, the pair of *adjacent*
entries with the highest cosine similarity is averaged into one (weighted by how many
original features each already holds), repeatedly, until it fits. Redundant stretches
(static video, repeated tokens) collapse while distinct events survive, and temporal
order is kept. With ``frame_ids``, the tokens of one frame are first mean-pooled into a
single bank entry (frame streams); otherwise every token is an entry. The stream reads
the bank through a gated cross-attention (zero-initialised gate, learned null slot).

Axis legend: b batch, n segment tokens, m bank entries, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import GatedCrossAttention, MemoryState, StreamMemory, keep_last_valid, positions_from_mask


@dataclass
class BankState(MemoryState):
    entries: Tensor | None = None  # (b, m, d) merged features, left-aligned, m <= budget
    weight: Tensor | None = None  # (b, m) float: original items merged into each entry
    position: Tensor | None = None  # (b, m) float: weighted mean position of each entry
    valid: Tensor | None = None  # (b, m) bool
    tokens: Tensor | None = None  # (b,) long: valid tokens written per row


class CompressiveBank(StreamMemory):
    """MA-LMM bank of at most ``budget`` entries, read by gated cross-attention."""

    name = "compressive_bank"
    state_cls = BankState

    def __init__(self, d_model: int, budget: int = 64, d_key: int | None = None, n_heads: int = 1) -> None:
        super().__init__(d_model)
        if budget < 2:
            raise ValueError(f"budget must be >= 2, got {budget}")
        self.budget = budget
        self.d_key = d_key or d_model
        self.n_heads = n_heads
        self.attn = GatedCrossAttention(d_model, self.d_key, n_heads)

    def config(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "budget": self.budget, "d_key": self.d_key, "n_heads": self.n_heads}

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BankState:
        dev = device if device is not None else self.attn.gate.device
        b = batch_size
        return BankState(
            entries=torch.zeros(b, 0, self.d_model, device=dev, dtype=dtype or torch.float32),
            weight=torch.zeros(b, 0, device=dev),
            position=torch.zeros(b, 0, device=dev),
            valid=torch.zeros(b, 0, dtype=torch.bool, device=dev),
            tokens=torch.zeros(b, dtype=torch.long, device=dev),
        )

    def read(self, state: BankState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        if state.entries.shape[1] == 0:
            return torch.zeros_like(query)
        return self.attn.attend(query, *self.attn.keys_values(state.entries), state.valid)

    def write(
        self,
        state: BankState,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> BankState:
        b, n, d = x.shape
        valid = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        if positions is None:
            positions = positions_from_mask(mask, state.tokens, b, n, x.device)
        pos = positions.float()
        w = valid.float()
        if frame_ids is not None:
            x, pos, w, valid = _pool_frames(x, pos, valid, frame_ids)  # one entry per frame
        entries = torch.cat([state.entries, x.to(state.entries.dtype)], 1)  # (b, m+n, d)
        weight = torch.cat([state.weight, w], 1)
        position = torch.cat([state.position, pos], 1)
        ok = torch.cat([state.valid, valid], 1)
        # left-align valid entries so adjacency is temporal adjacency
        (entries, weight, position), ok = _left_align([entries, weight, position], ok)
        entries, weight, position, ok = self._compress(entries, weight, position, ok)
        tokens = state.tokens + (n if mask is None else mask.long().sum(-1))
        return BankState(
            segments=state.segments + 1, entries=entries, weight=weight, position=position, valid=ok, tokens=tokens
        )

    def _compress(self, e: Tensor, w: Tensor, p: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Merge the most similar adjacent valid pair per row until every row fits the budget."""
        count = ok.long().sum(-1)  # (b,)
        while int(count.max()) > self.budget:
            b, m, _ = e.shape
            en = F.normalize(e.detach().float(), dim=-1)
            sim = (en[:, :-1] * en[:, 1:]).sum(-1)  # (b, m-1) adjacent cosine similarity
            pair_ok = ok[:, :-1] & ok[:, 1:]
            sim = sim.masked_fill(~pair_ok, float("-inf"))
            i = sim.argmax(-1)  # (b,) merge i and i+1
            need = count > self.budget  # rows that still have to shrink
            ar = torch.arange(m, device=e.device)[None, :]
            wi, wj = w.gather(1, i[:, None]), w.gather(1, i[:, None] + 1)  # (b, 1)
            tot = (wi + wj).clamp_min(1e-6)
            ei, ej = e.gather(1, i[:, None, None].expand(b, 1, e.shape[-1])), e.gather(
                1, i[:, None, None].expand(b, 1, e.shape[-1]) + 1
            )
            merged_e = (ei * wi[..., None] + ej * wj[..., None]) / tot[..., None]  # (b, 1, d)
            merged_p = (p.gather(1, i[:, None]) * wi + p.gather(1, i[:, None] + 1) * wj) / tot
            at_i = (ar == i[:, None]) & need[:, None]  # (b, m)
            e = torch.where(at_i[..., None], merged_e, e)
            w = torch.where(at_i, wi + wj, w)
            p = torch.where(at_i, merged_p, p)
            drop = (ar == (i[:, None] + 1)) & need[:, None]
            ok = ok & ~drop
            (e, w, p), ok = _left_align([e, w, p], ok)
            count = ok.long().sum(-1)
        keep = max(int(count.max()), 0)
        return e[:, :keep], w[:, :keep], p[:, :keep], ok[:, :keep]


def _left_align(values: list[Tensor], valid: Tensor) -> tuple[list[Tensor], Tensor]:
    """Move each row's valid entries to the front, in order (stable)."""
    if bool(valid.all()):
        return values, valid
    m = valid.shape[1]
    # reverse, keep-last-valid (right-aligned), reverse back == left-aligned keep-first
    rev = [v.flip(1) for v in values]
    out, ok = keep_last_valid(rev, valid.flip(1), m)
    return [v.flip(1) for v in out], ok.flip(1)


def _pool_frames(x: Tensor, pos: Tensor, valid: Tensor, frame_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean-pool the valid tokens of each frame (consecutive equal ids) into one entry."""
    b, n, d = x.shape
    change = torch.ones(b, n, dtype=torch.bool, device=x.device)
    change[:, 1:] = frame_ids[:, 1:] != frame_ids[:, :-1]
    group = change.long().cumsum(-1) - 1  # (b, n) frame index within the segment
    g = int(group.max()) + 1
    vf = valid.float()
    sums = x.new_zeros(b, g, d).scatter_add(1, group[..., None].expand(b, n, d), x * vf[..., None])
    cnt = x.new_zeros(b, g).scatter_add(1, group, vf)
    psum = x.new_zeros(b, g).scatter_add(1, group, pos * vf)
    ok = cnt > 0
    c = cnt.clamp_min(1)
    return sums / c[..., None], psum / c, cnt, ok
