"""Attention sinks + a sliding window of recent tokens (StreamingLLM).

Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (ICLR 2024).
Attention over an unbounded stream is made constant-memory by keeping only the first
``sinks`` tokens (which absorb attention mass that softmax must put somewhere) and the
most recent ``window`` tokens; everything in between is evicted. Here the cache holds the
stream's hidden states and is read by a gated cross-attention whose keys for the token
at position p are exactly: the sink tokens (positions < ``sinks``) and the tokens in
``(p - window, p]``, *including earlier tokens of the current segment* (causal). The
result therefore does not depend on how the stream is cut into segments (tested), and
the state is bounded by ``sinks + window`` entries. Anything that left the window is
gone: the baseline that the recall suite shows failing once a needle is evicted.

Axis legend: b batch, n segment tokens, s sink slots, w window slots, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import GatedCrossAttention, MemoryState, StreamMemory, keep_last_valid, positions_from_mask


@dataclass
class SinkWindowState(MemoryState):
    sink: Tensor | None = None  # (b, s, d) the first `sinks` tokens
    sink_valid: Tensor | None = None  # (b, s) bool
    win: Tensor | None = None  # (b, w, d) the most recent tokens, right-aligned
    win_pos: Tensor | None = None  # (b, w) long absolute positions
    win_valid: Tensor | None = None  # (b, w) bool
    tokens: Tensor | None = None  # (b,) long: valid tokens seen per row


class SinkWindow(StreamMemory):
    """StreamingLLM cache: ``sinks`` first tokens + ``window`` most recent tokens."""

    name = "sink_window"
    segment_invariant = True
    state_cls = SinkWindowState

    def __init__(self, d_model: int, sinks: int = 4, window: int = 256, d_key: int | None = None, n_heads: int = 1):
        super().__init__(d_model)
        if sinks < 0 or window < 1:
            raise ValueError(f"need sinks >= 0 and window >= 1, got sinks={sinks}, window={window}")
        self.sinks, self.window = sinks, window
        self.d_key = d_key or d_model
        self.n_heads = n_heads
        self.attn = GatedCrossAttention(d_model, self.d_key, n_heads)

    def config(self) -> dict[str, Any]:
        return {"d_model": self.d_model, "sinks": self.sinks, "window": self.window, "d_key": self.d_key, "n_heads": self.n_heads}

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SinkWindowState:
        dev = device if device is not None else self.attn.gate.device
        b, dt = batch_size, dtype or torch.float32
        return SinkWindowState(
            sink=torch.zeros(b, self.sinks, self.d_model, device=dev, dtype=dt),
            sink_valid=torch.zeros(b, self.sinks, dtype=torch.bool, device=dev),
            win=torch.zeros(b, self.window, self.d_model, device=dev, dtype=dt),
            win_pos=torch.zeros(b, self.window, dtype=torch.long, device=dev),
            win_valid=torch.zeros(b, self.window, dtype=torch.bool, device=dev),
            tokens=torch.zeros(b, dtype=torch.long, device=dev),
        )

    def read(self, state: SinkWindowState, query: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """Each query token at position p attends to sinks and to tokens in (p - window, p]."""
        b, n, _ = query.shape
        qpos = positions_from_mask(mask, state.tokens, b, n, query.device)  # (b, n)
        qvalid = torch.ones(b, n, dtype=torch.bool, device=query.device) if mask is None else mask.bool()
        keys = torch.cat([state.sink.to(query.dtype), state.win.to(query.dtype), query], 1)  # (b, s+w+n, d)
        lo = (qpos - self.window)[..., None]  # (b, n, 1) exclusive lower bound
        # sinks: always visible once written
        m_sink = state.sink_valid[:, None, :].expand(b, n, self.sinks)
        # window entries: inside the window, not also a sink (no duplicates)
        wp = state.win_pos[:, None, :]
        m_win = state.win_valid[:, None, :] & (wp > lo) & (wp >= self.sinks)
        # current segment: causal, inside the window or a sink position
        kp = qpos[:, None, :]  # (b, 1, n) key positions
        m_seg = qvalid[:, None, :] & (kp <= qpos[..., None]) & ((kp > lo) | (kp < self.sinks))
        allowed = torch.cat([m_sink, m_win, m_seg], -1)  # (b, n, s+w+n)
        return self.attn.attend(query, *self.attn.keys_values(keys), allowed)

    def write(
        self,
        state: SinkWindowState,
        x: Tensor,
        *,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> SinkWindowState:
        b, n, _ = x.shape
        valid = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        pos = positions_from_mask(mask, state.tokens, b, n, x.device)  # token index in the stream
        x = x.to(state.win.dtype)
        sink, sink_valid = state.sink, state.sink_valid
        if self.sinks:
            # tokens whose stream index is < sinks go to their sink slot
            to_sink = valid & (pos < self.sinks)
            if bool(to_sink.any()):
                slot = torch.where(to_sink, pos, torch.full_like(pos, self.sinks)).clamp_max(self.sinks)
                d = x.shape[-1]
                buf = torch.cat([sink, sink.new_zeros(b, 1, d)], 1)
                buf = buf.scatter(1, slot[..., None].expand(b, n, d), torch.where(to_sink[..., None], x, buf.gather(1, slot[..., None].expand(b, n, d))))
                sink = buf[:, : self.sinks]
                okb = torch.cat([sink_valid, sink_valid.new_zeros(b, 1)], 1).scatter(1, slot, to_sink | okb_gather(sink_valid, slot))
                sink_valid = okb[:, : self.sinks]
        win_all = torch.cat([state.win, x], 1)  # (b, w+n, d)
        pos_all = torch.cat([state.win_pos, pos], 1)
        ok_all = torch.cat([state.win_valid, valid], 1)
        (win, win_pos), win_valid = keep_last_valid([win_all, pos_all], ok_all, self.window)
        tokens = state.tokens + valid.long().sum(-1)
        return SinkWindowState(
            segments=state.segments + 1,
            sink=sink,
            sink_valid=sink_valid,
            win=win,
            win_pos=win_pos,
            win_valid=win_valid,
            tokens=tokens,
        )


def okb_gather(valid: Tensor, slot: Tensor) -> Tensor:
    """Current validity of the sink slot each token maps to (False for the dummy slot)."""
    padded = torch.cat([valid, valid.new_zeros(valid.shape[0], 1)], 1)
    return padded.gather(1, slot)
