"""Streamed evaluation of ONE very long input with bounded memory.

A whole chromosome, an hour of audio or a long video does not fit one forward pass.
:func:`stream_evaluate` feeds it through :class:`longstream.memory.StreamRunner` segment
by segment, without gradients, carrying the backbone state (and a memory module's state)
from each segment to the next, so for a causal backbone with carried state the outputs
equal one full forward pass. Nothing grows with the input length unless asked for:

- ``keep_outputs=True`` concatenates the per-segment outputs (for inputs whose outputs
  fit in memory); ``False`` keeps none of them.
- ``on_segment(start, output, state)`` receives each segment's output as it is made (write
  per-base predictions to disk, accumulate metrics, ...).
- ``pool="mean" | "last"`` reduces the outputs online to one (B, D) vector per row
  (running masked sum / last valid token), e.g. for species classification of a genome.

:func:`iter_stream` is the same loop as an iterator of :class:`StreamSegment`. A progress
bar (:func:`~.progress.progress`, off under ``--quiet``) counts tokens. Segments can be
moved to ``device`` one at a time, so only one segment lives on the GPU.

Axis legend: b batch, l total length, n segment length, d model width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .heads import pool_last
from .progress import progress

__all__ = ["StreamResult", "StreamSegment", "iter_stream", "stream_evaluate"]


@dataclass
class StreamSegment:
    """One processed segment: ``output`` covers input positions ``start : start + n``."""

    start: int
    output: Tensor
    state: Any  # longstream.memory.StreamState after this segment


@dataclass
class StreamResult:
    """What :func:`stream_evaluate` returns."""

    outputs: Tensor | None  # (b, l, ...) when keep_outputs, else None
    pooled: Tensor | None  # (b, d) when pool is set, else None
    state: Any  # final StreamState (continue the stream with state=...)
    segments: int
    tokens: int
    peak_state_bytes: int  # largest StreamState.nbytes() seen: bounded for carried state


def _runner(model: Any, memory: Any, segment_len: int | None, embed: Any, head: Any):
    from longstream.memory import StreamRunner

    if isinstance(model, StreamRunner):
        if memory is not None or embed is not None or head is not None:
            raise ValueError("pass memory / embed / head to the StreamRunner, not to stream_evaluate")
        return model
    return StreamRunner(model, memory, segment_len=segment_len, detach_every=None, embed=embed, head=head,
                        progress=False)


@contextlib.contextmanager
def _eval_mode(runner: Any) -> Iterator[None]:
    mods = [m for m in (runner.backbone, runner.memory, runner.embed, runner.head) if isinstance(m, nn.Module)]
    was = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(mods, was):
            m.train(w)


def iter_stream(
    model: Any,
    x: Tensor,
    *,
    segment_len: int | None = 4096,
    memory: Any = None,
    embed: Callable[[Tensor], Tensor] | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
    mask: Tensor | None = None,
    state: Any = None,
    device: torch.device | str | None = None,
    desc: str = "stream",
) -> Iterator[StreamSegment]:
    """Yield :class:`StreamSegment` for each segment of ``x`` (B, L, ...), in eval mode, without grad.

    ``model`` is a backbone (a runner is built around it with ``memory`` / ``embed`` /
    ``head``) or a ready :class:`~longstream.memory.StreamRunner` (its own ``segment_len``
    is used). ``state`` continues an earlier stream. ``device``: move each segment (and
    its mask) there before running it; outputs stay on that device.
    """
    runner = _runner(model, memory, segment_len, embed, head)
    b, L = x.shape[0], x.shape[1]
    dev = torch.device(device) if device is not None else x.device
    n = L if runner.segment_len is None else runner.segment_len
    with torch.no_grad(), _eval_mode(runner), progress(total=L, desc=desc, unit="tok") as bar:
        if state is None:
            state = runner.init_state(b, device=dev)
        for s in range(0, L, max(n, 1)):
            e = min(s + n, L)
            seg = x[:, s:e].to(dev)
            m = None if mask is None else mask[:, s:e].to(dev)
            y, state = runner.step_segment(seg, state, mask=m)
            bar.update(e - s)
            yield StreamSegment(s, y, state)


def stream_evaluate(
    model: Any,
    x: Tensor,
    *,
    segment_len: int | None = 4096,
    memory: Any = None,
    embed: Callable[[Tensor], Tensor] | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
    mask: Tensor | None = None,
    state: Any = None,
    device: torch.device | str | None = None,
    keep_outputs: bool = True,
    pool: str | None = None,
    on_segment: Callable[[int, Tensor, Any], None] | None = None,
    desc: str = "stream",
) -> StreamResult:
    """Run one long input through the stream runner; see the module docstring.

    ``pool`` needs outputs of shape (B, n, D); with ``mask`` padded positions are left out
    of the pooled vector (a row without any valid token pools to zeros).
    """
    if pool not in (None, "mean", "last"):
        raise ValueError(f"streamed pool must be None, 'mean' or 'last', got {pool!r}")
    outs: list[Tensor] = []
    total = count = last = None
    peak, segments, st = 0, 0, state
    for seg in iter_stream(model, x, segment_len=segment_len, memory=memory, embed=embed, head=head,
                           mask=mask, state=state, device=device, desc=desc):
        y, st = seg.output, seg.state
        segments += 1
        peak = max(peak, st.nbytes())
        if keep_outputs:
            outs.append(y)
        if pool is not None:
            m = None if mask is None else mask[:, seg.start : seg.start + y.shape[1]].to(y.device)
            valid = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device) if m is None else m.bool()
            if pool == "mean":
                part = y.masked_fill(~valid[..., None], 0.0).sum(1)  # (b, d)
                total = part if total is None else total + part
                count = valid.sum(1) if count is None else count + valid.sum(1)
            else:
                cur = pool_last(y, valid)  # (b, d)
                has = valid.any(1, keepdim=True)
                last = torch.where(has, cur, last if last is not None else torch.zeros_like(cur))
        if on_segment is not None:
            on_segment(seg.start, y, st)
        del seg, y
    if st is None:  # empty input
        st = _runner(model, memory, segment_len, embed, head).init_state(x.shape[0], device=device or x.device)
    pooled = None
    if pool == "mean" and total is not None:
        pooled = total / count.clamp_min(1)[:, None].to(total.dtype)
    elif pool == "last":
        pooled = last
    outputs = torch.cat(outs, 1) if keep_outputs and outs else None
    return StreamResult(outputs=outputs, pooled=pooled, state=st, segments=segments, tokens=int(x.shape[1]),
                        peak_state_bytes=peak)
