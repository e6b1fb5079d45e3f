"""Incremental best-path CTC decoding with word times, for connected digits on a stream.

The recogniser gives, per 20 ms token, CTC class scores (blank + 10 digits) and the
probability that the token is speech (a speech/pause head trained next to CTC). CTC alone
places one narrow *spike* per word, somewhere inside or just after it, which is not a word
boundary. Word times therefore come from the speech/pause track:

1. runs of tokens with speech probability above ``vad_threshold`` form *segments*;
2. each CTC spike (a non-blank best label that differs from the previous token's) is one
   digit: a *partial result*, emitted at once, with its time still open;
3. a segment closes at the first pause token, then waits ``grace`` tokens for a late spike
   (a causal model may fire shortly after the word ends); a spike in a pause goes to the
   latest segment that ended within ``grace`` tokens and has none yet, else to the open one;
4. a closed segment with ``k`` spikes becomes ``k`` words, split at the least speech-like
   token between consecutive spikes; a segment without spikes is dropped (noise);
5. a word's start / end are its segment's first / past-the-end token times plus the
   calibrated ``start_offset`` / ``end_offset`` (median errors on train-take streams).

Memory is bounded: only open / recently closed segments are kept, and a segment longer than
``max_segment`` tokens is closed by force. Nothing here depends on torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Partial:
    """A digit as soon as CTC emits it (its word's times are not known yet)."""

    digit: int
    token: int  # index of the spike token in the stream
    time: float  # seconds: when the spike token's audio ends (the earliest the digit can be known)
    confidence: float


@dataclass
class WordTime:
    digit: int
    start: float
    end: float
    confidence: float
    token: int  # spike token


@dataclass
class _Segment:
    start: int
    end: int | None = None  # past-the-end token; None while open
    spikes: list[tuple[int, int, float]] = field(default_factory=list)  # (token, digit, prob)
    speech: list[float] = field(default_factory=list)  # speech probability per token (for splits)


class StreamingCTCDecoder:
    """Feed per-token arrays chunk by chunk with :meth:`push`; :meth:`finish` at the end.

    ``token_sec`` is the token spacing, ``first_time`` the time of token 0's centre and
    ``avail_time`` when token 0's audio is complete (both seconds). Labels: 0 blank, ``d + 1``
    digit ``d``.
    """

    def __init__(self, *, token_sec: float, first_time: float, avail_time: float, blank: int = 0,
                 vad_threshold: float = 0.5, start_offset: float = 0.0, end_offset: float = 0.0,
                 grace: int = 8, max_segment: int = 250) -> None:
        self.token_sec, self.first_time, self.avail_time = token_sec, first_time, avail_time
        self.blank, self.vad_threshold = blank, vad_threshold
        self.start_offset, self.end_offset = start_offset, end_offset
        self.grace, self.max_segment = grace, max_segment
        self.n = 0  # tokens seen
        self.prev = blank
        self.segments: list[_Segment] = []  # unfinalized, oldest first; at most one open (the last)

    def time_of(self, token: float) -> float:
        return self.first_time + token * self.token_sec

    # ------------------------------------------------------------------ feeding
    def push(self, labels: np.ndarray, probs: np.ndarray, speech: np.ndarray) -> tuple[list[Partial], list[WordTime]]:
        """``labels`` (T,) best CTC label per token, ``probs`` (T,) its probability, ``speech`` (T,)
        speech probability -> (partial results, finalized words) of these tokens."""
        partials: list[Partial] = []
        words: list[WordTime] = []
        for lab, p, sp in zip(np.asarray(labels).tolist(), np.asarray(probs).tolist(), np.asarray(speech).tolist()):
            n = self.n
            is_speech = sp > self.vad_threshold
            seg = self.segments[-1] if self.segments and self.segments[-1].end is None else None
            if is_speech and seg is None:
                seg = _Segment(start=n)
                self.segments.append(seg)
            if seg is not None:
                seg.speech.append(sp)
                if not is_speech or n - seg.start >= self.max_segment:
                    seg.end = n if not is_speech else n + 1
                    seg = None
            if lab != self.blank and lab != self.prev:
                self._attach((n, lab - 1, p), seg)
                partials.append(Partial(lab - 1, n, self.avail_time + n * self.token_sec, p))
            self.prev = lab
            self.n += 1
            words.extend(self._finalize(self.n - self.grace))
        return partials, words

    def finish(self) -> list[WordTime]:
        """Close everything at the end of the stream and return the remaining words."""
        if self.segments and self.segments[-1].end is None:
            self.segments[-1].end = self.n
        return self._finalize(None)

    # ------------------------------------------------------------------ internals
    def _attach(self, spike: tuple[int, int, float], open_seg: _Segment | None) -> None:
        n = spike[0]
        for s in self.segments:  # a late spike: the oldest recently closed segment still without one
            if s.end is not None and not s.spikes and n - s.end <= self.grace:
                s.spikes.append(spike)
                return
        if open_seg is not None:
            open_seg.spikes.append(spike)
            return
        closed = [s for s in self.segments if s.end is not None]
        if closed and n - closed[-1].end <= self.grace:
            closed[-1].spikes.append(spike)
            return
        # no speech detected around the spike: a one-token segment at the spike
        self.segments.append(_Segment(start=n, end=n + 1, spikes=[spike], speech=[1.0]))

    def _finalize(self, before: int | None) -> list[WordTime]:
        """Words of the closed segments whose grace period ended before token ``before`` (None: all)."""
        out: list[WordTime] = []
        while self.segments and self.segments[0].end is not None and (
            before is None or self.segments[0].end <= before
        ):
            out.extend(self._split(self.segments.pop(0)))
        return out

    def _split(self, seg: _Segment) -> list[WordTime]:
        if not seg.spikes:
            return []
        assert seg.end is not None
        bounds = [seg.start]
        sp = np.asarray(seg.speech) if seg.speech else np.ones(seg.end - seg.start)
        for (a, _, _), (b, _, _) in zip(seg.spikes, seg.spikes[1:]):
            lo = min(max(a, seg.start), seg.end - 1) - seg.start
            hi = min(max(b, seg.start), seg.end - 1) - seg.start
            if hi > lo:
                cut = lo + 1 + int(np.argmin(sp[lo + 1 : hi + 1])) if hi > lo + 1 else hi
            else:  # two spikes at the same place: split the span evenly
                cut = lo
            bounds.append(seg.start + cut)
        bounds.append(seg.end)
        words = []
        for i, (tok, digit, prob) in enumerate(seg.spikes):
            a, b = bounds[i], max(bounds[i + 1], bounds[i] + 1)
            words.append(WordTime(digit, max(0.0, self.time_of(a - 0.5) + self.start_offset),
                                  self.time_of(b - 0.5) + self.end_offset, prob, tok))
        return words


def decode_arrays(labels: np.ndarray, probs: np.ndarray, speech: np.ndarray, **kw) -> tuple[list[Partial], list[WordTime]]:
    """Offline convenience: the whole stream at once (same result as pushing it in chunks)."""
    dec = StreamingCTCDecoder(**kw)
    partials, words = dec.push(labels, probs, speech)
    return partials, words + dec.finish()
