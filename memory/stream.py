"""The one segment runner: split a long input, thread backbone state and memory, bound BPTT.

Every streaming model in longstream (the recall suite, video, speech, genomics, motion)
goes through :class:`StreamRunner`, following the segment loop of the Recurrent Memory
Transformer (Bulatov et al., 2022) and truncated back-propagation through time. A long
input ``x`` (B, L, ...) is cut into segments of ``segment_len`` along axis 1; each
segment is embedded (optional ``embed``), run through the backbone (continuing its state
when ``carry_backbone_state``), passed through the memory (which reads the past and
writes the segment), and mapped by an optional ``head``. Every ``detach_every`` segments
the backbone state and the memory are detached, so gradients reach at most that many
segments back and training memory is bounded. ``iter`` yields one segment at a time
(nothing accumulates: constant memory on unbounded streams); ``run`` concatenates the
outputs. A tqdm bar appears for long inputs on a terminal. The stream state (backbone
state + memory + counters) saves to and restores from one safetensors file, so a stream
survives a restart and continues exactly.

Axis legend: b batch, l total length, n segment length, d model width.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from longstream.backbones.io import save_tensor_file

from .base import (
    MemoryState,
    MemoryStateError,
    StreamMemory,
    backbone_identity,
    flatten_tree,
    read_state_file,
    unflatten_tree,
)

__all__ = ["StreamRunner", "StreamState"]


@dataclass
class StreamState:
    """Everything needed to continue a stream: backbone state, memory state, counters."""

    backbone: Any = None  # backbone state pytree (None = fresh, or memory wraps the backbone)
    memory: MemoryState | None = None
    position: int = 0  # tokens consumed (along axis 1, padding included)
    segments: int = 0  # segments consumed

    def nbytes(self) -> int:
        """Bytes held by the backbone state and the memory."""
        leaves, _ = tree_flatten(self.backbone)
        n = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))
        return n + (self.memory.nbytes() if self.memory is not None else 0)


class StreamRunner:
    """Run ``backbone`` (+ ``memory``) over a long input segment by segment.

    Args:
        backbone: a :class:`~longstream.backbones.base.Backbone` (may be None when ``memory`` wraps it
            or when the stream is features already mixed elsewhere).
        memory: a :class:`~longstream.memory.base.StreamMemory` or None.
        segment_len: tokens per segment (None = the whole input at once).
        detach_every: detach state every k segments (truncated BPTT); None = never.
        carry_backbone_state: continue the backbone's state across segments (True), or
            start every segment fresh so the memory is the only path between segments.
        embed: optional callable applied to each input segment -> (B, N, D).
        head: optional callable applied to each output segment.
        progress: show a tqdm bar (None = automatically for >= 64 segments on a TTY).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        memory: StreamMemory | None = None,
        *,
        segment_len: int | None = 512,
        detach_every: int | None = 1,
        carry_backbone_state: bool = True,
        embed: Callable[[Tensor], Tensor] | None = None,
        head: Callable[[Tensor], Tensor] | None = None,
        progress: bool | None = None,
    ) -> None:
        if segment_len is not None and segment_len < 1:
            raise ValueError(f"segment_len must be >= 1 or None, got {segment_len}")
        if detach_every is not None and detach_every < 1:
            raise ValueError(f"detach_every must be >= 1 or None, got {detach_every}")
        if memory is not None and memory.wraps_backbone and backbone is not None and backbone is not getattr(memory, "backbone", None):
            raise ValueError(f"memory {memory.name!r} runs its own backbone; pass backbone=None to the runner")
        self.backbone, self.memory = backbone, memory
        self.segment_len, self.detach_every = segment_len, detach_every
        self.carry_backbone_state = carry_backbone_state
        self.embed, self.head, self.progress = embed, head, progress

    def _bb(self) -> nn.Module | None:
        if self.memory is not None and self.memory.wraps_backbone:
            return None
        return self.backbone

    # ------------------------------------------------------------------------ state
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> StreamState:
        """A fresh stream state for ``batch_size`` rows."""
        bb = self._bb()
        bstate = bb.init_state(batch_size, device=device) if bb is not None and self.carry_backbone_state else None
        mstate = self.memory.init_state(batch_size, device=device) if self.memory is not None else None
        return StreamState(backbone=bstate, memory=mstate)

    def detach(self, state: StreamState) -> StreamState:
        """Cut the autograd graph behind ``state``."""
        b = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state.backbone)
        m = self.memory.detach(state.memory) if self.memory is not None and state.memory is not None else state.memory
        return dataclasses.replace(state, backbone=b, memory=m)

    def reset(self, state: StreamState, done_mask: Tensor) -> StreamState:
        """Restart the rows whose stream ended (``done_mask`` (B,) bool)."""
        m = self.memory.reset(state.memory, done_mask) if self.memory is not None else None
        b = state.backbone
        bb = self._bb()
        if b is not None and bb is not None:
            from .base import _reset_tree

            b = _reset_tree(b, bb.init_state(done_mask.shape[0], device=done_mask.device), done_mask, "backbone")
        return dataclasses.replace(state, backbone=b, memory=m)

    # ------------------------------------------------------------------------- run
    def step_segment(
        self,
        seg: Tensor,
        state: StreamState,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
    ) -> tuple[Tensor, StreamState]:
        """Process one segment ``seg`` (B, N, ...) -> (output, new state). No detaching."""
        x = self.embed(seg) if self.embed is not None else seg  # (b, n, d)
        bstate, mstate = state.backbone, state.memory
        bb = self._bb()
        if bb is not None:
            x, bnew = bb(x, bstate if self.carry_backbone_state else None, mask=mask)
            bstate = bnew if self.carry_backbone_state else None
        if self.memory is not None:
            x, mstate = self.memory(x, mstate, positions=positions, frame_ids=frame_ids, mask=mask)
        y = self.head(x) if self.head is not None else x
        return y, StreamState(backbone=bstate, memory=mstate, position=state.position + seg.shape[1], segments=state.segments + 1)

    def iter(
        self,
        x: Tensor,
        state: StreamState | None = None,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
    ) -> Iterator[tuple[int, Tensor, StreamState]]:
        """Yield ``(start, output_segment, state_after)`` for each segment of ``x`` (B, L, ...)."""
        b, L = x.shape[0], x.shape[1]
        if state is None:
            state = self.init_state(b, device=x.device)
        n = L if self.segment_len is None else self.segment_len
        starts = range(0, L, max(n, 1))
        bar = None
        if len(starts) >= 64 and self.progress is not False:
            from tqdm.auto import tqdm

            bar = tqdm(total=L, unit="tok", desc="stream", disable=None if self.progress is None else not self.progress, leave=False)
        try:
            for s in starts:
                e = min(s + n, L)
                sl = slice(s, e)
                y, state = self.step_segment(
                    x[:, sl],
                    state,
                    mask=None if mask is None else mask[:, sl],
                    positions=None if positions is None else positions[:, sl],
                    frame_ids=None if frame_ids is None else frame_ids[:, sl],
                )
                if self.detach_every is not None and state.segments % self.detach_every == 0:
                    state = self.detach(state)
                if bar is not None:
                    bar.update(e - s)
                yield s, y, state
        finally:
            if bar is not None:
                bar.close()

    def run(
        self,
        x: Tensor,
        state: StreamState | None = None,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        frame_ids: Tensor | None = None,
    ) -> tuple[Tensor, StreamState]:
        """Stream all of ``x`` and return the concatenated outputs and the final state."""
        outs = []
        last = state
        for _, y, new_state in self.iter(x, state, mask=mask, positions=positions, frame_ids=frame_ids):
            outs.append(y)
            last = new_state
        if not outs:  # empty input: nothing consumed
            last = last if last is not None else self.init_state(x.shape[0], device=x.device)
            return x.new_zeros(x.shape[0], 0), last
        return torch.cat(outs, 1), last

    # --------------------------------------------------------------- save / restore
    def _identity(self) -> dict[str, Any]:
        bb = self._bb()
        return {
            "backbone": backbone_identity(bb),
            "memory": self.memory._identity() if self.memory is not None else None,
            "segment_len": self.segment_len,
            "carry_backbone_state": self.carry_backbone_state,
        }

    def save_state(self, state: StreamState, path: str | os.PathLike) -> None:
        """Write ``state`` to ``path`` (one safetensors file, atomic, digest-verified on load)."""
        tensors: dict[str, Tensor] = {}
        meta: dict[str, Any] = {"identity": self._identity(), "position": state.position, "segments": state.segments}
        spec, consts, tt = flatten_tree(state.backbone)
        meta["backbone_spec"], meta["backbone_consts"] = spec, consts
        tensors.update({f"backbone.{i}": t for i, t in tt.items()})
        mmeta = None
        if self.memory is not None and state.memory is not None:
            mt, mmeta = self.memory.state_dict_of(state.memory)
            tensors.update({f"memory/{k}": v for k, v in mt.items()})
        meta["memory_meta"] = mmeta
        save_tensor_file(path, tensors, {"longstream_stream": json.dumps(meta, sort_keys=True)})

    def load_state(self, path: str | os.PathLike, *, device: torch.device | str | None = None) -> StreamState:
        """Read a state written by :meth:`save_state`; refuses one saved by another setup."""
        path = os.fspath(path)
        tensors, md = read_state_file(path, device=device, what="stream state")
        if "longstream_stream" not in md:
            raise MemoryStateError(f"{path!r} is not a longstream stream state")
        meta = json.loads(md["longstream_stream"])
        mine = self._identity()
        if meta["identity"] != mine:
            diff = [k for k in mine if mine[k] != meta["identity"].get(k)]
            raise MemoryStateError(
                f"stream state {path!r} was saved with a different setup (differs in: {', '.join(diff)}); "
                f"saved: {json.dumps({k: meta['identity'].get(k) for k in diff})}; "
                "rebuild the runner with the saved configuration to continue this stream"
            )
        bstate = unflatten_tree(meta["backbone_spec"], meta["backbone_consts"], tensors, "backbone.")
        mstate = None
        if meta["memory_meta"] is not None and self.memory is not None:
            mt = {k[len("memory/") :]: v for k, v in tensors.items() if k.startswith("memory/")}
            mstate = self.memory.state_from_dict(mt, meta["memory_meta"], source=f"stream state {path!r}")
        return StreamState(backbone=bstate, memory=mstate, position=meta["position"], segments=meta["segments"])
