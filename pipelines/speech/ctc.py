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

from collections import deque
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
    digit ``d``. Segment refinements (all bounded look-backs, so memory stays constant):
    ``hangover`` pause tokens are needed to close a segment (a stop closure inside a word does
    not split it); a new segment's start moves back over the preceding tokens whose speech
    probability exceeds ``onset_threshold`` (at most ``lookback`` tokens: soft onsets such as
    /s/ or /θ/); a segment without a spike that starts within ``absorb`` tokens after a word
    (and is at most ``absorb_len`` long) extends that word's end, one that ends within
    ``absorb`` tokens before a word extends its start.
    """

    def __init__(self, *, token_sec: float, first_time: float, avail_time: float, blank: int = 0,
                 vad_threshold: float = 0.5, start_offset: float = 0.0, end_offset: float = 0.0,
                 grace: int = 8, max_segment: int = 250, hangover: int = 3, onset_threshold: float = 0.2,
                 lookback: int = 10, absorb: int = 6, absorb_len: int = 20) -> None:
        self.token_sec, self.first_time, self.avail_time = token_sec, first_time, avail_time
        self.blank, self.vad_threshold = blank, vad_threshold
        self.start_offset, self.end_offset = start_offset, end_offset
        self.grace, self.max_segment = grace, max_segment
        self.hangover, self.onset_threshold, self.lookback = hangover, onset_threshold, lookback
        self.absorb, self.absorb_len = absorb, absorb_len
        self.n = 0  # tokens seen
        self.prev = blank
        self.off_run = 0  # pause tokens since the open segment's last speech token
        self.recent: deque[float] = deque(maxlen=lookback)  # speech probabilities of the last tokens
        self.last_end = 0  # past-the-end token of the latest closed segment
        self.segments: list[_Segment] = []  # unfinalized, oldest first; at most one open (the last)
        self.held: list[tuple[int, int, list[tuple[int, int, float]], list[float], int]] = []  # finalized, not emitted
        self.dropped: tuple[int, int] | None = None  # latest spike-less segment (start, end)

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
                back = 0  # soft onset: the tokens just before that were already fairly speech-like
                for q in reversed(self.recent):
                    if q <= self.onset_threshold or n - back - 1 < self.last_end:
                        break
                    back += 1
                seg = _Segment(start=n - back, speech=list(self.recent)[len(self.recent) - back:] if back else [])
                self.segments.append(seg)
                self.off_run = 0
            if seg is not None:
                seg.speech.append(sp)
                self.off_run = 0 if is_speech else self.off_run + 1
                if self.off_run > self.hangover or n + 1 - seg.start >= self.max_segment:
                    seg.end = n + 1 - self.off_run
                    del seg.speech[seg.end - seg.start:]
                    self.last_end = seg.end
                    seg = None
            self.recent.append(sp)
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
            seg = self.segments[-1]
            seg.end = self.n - self.off_run if self.n - self.off_run > seg.start else self.n
            del seg.speech[seg.end - seg.start:]
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
            seg = self.segments.pop(0)
            assert seg.end is not None
            if not seg.spikes:  # noise, or a part of a neighbouring word
                if self.held and seg.start - self.held[-1][1] <= self.absorb and seg.end - seg.start <= self.absorb_len:
                    a, _, spikes, sp, origin = self.held[-1]
                    self.held[-1] = (a, seg.end, spikes, sp, origin)  # the word's quiet tail
                else:
                    self.dropped = (seg.start, seg.end)
                continue
            out.extend(self._release())
            start = seg.start
            if self.dropped and 0 <= start - self.dropped[1] <= self.absorb and \
                    self.dropped[1] - self.dropped[0] <= self.absorb_len:
                start = self.dropped[0]  # the word's quiet head
            self.dropped = None
            self.held.append((start, seg.end, seg.spikes, seg.speech, seg.start))
        if before is None or (self.held and before - self.held[-1][1] > self.absorb + self.absorb_len):
            out.extend(self._release())
        return out

    def _release(self) -> list[WordTime]:
        out = []
        for a, b, spikes, sp, origin in self.held:
            out.extend(self._split(a, b, spikes, sp, origin))
        self.held = []
        return out

    def _split(self, start: int, end: int, spikes: list[tuple[int, int, float]], speech: list[float],
               origin: int) -> list[WordTime]:
        """Words of the span ``[start, end)``; ``speech[k]`` is the probability of token ``origin + k``."""
        bounds = [start]
        sp = np.asarray(speech, dtype=np.float64)
        for (a, _, _), (b, _, _) in zip(spikes, spikes[1:]):  # cut at the least speech-like token between spikes
            lo, hi = min(max(a, start), end - 1), min(max(b, start), end - 1)
            i0, i1 = max(0, lo + 1 - origin), max(0, hi + 1 - origin)
            window = sp[i0:i1]
            if hi > lo + 1 and len(window):
                cut = origin + i0 + int(np.argmin(window))
            else:
                cut = hi if hi > lo else lo
            bounds.append(min(max(cut, bounds[-1]), end))
        bounds.append(end)
        words = []
        for i, (tok, digit, prob) in enumerate(spikes):
            a, b = bounds[i], max(bounds[i + 1], bounds[i] + 1)
            start = max(0.0, self.time_of(a - 0.5) + self.start_offset)
            end = max(start + 0.001, self.time_of(b - 0.5) + self.end_offset)
            words.append(WordTime(digit, start, end, prob, tok))
        return words


def decode_arrays(labels: np.ndarray, probs: np.ndarray, speech: np.ndarray, **kw) -> tuple[list[Partial], list[WordTime]]:
    """Offline convenience: the whole stream at once (same result as pushing it in chunks)."""
    dec = StreamingCTCDecoder(**kw)
    partials, words = dec.push(labels, probs, speech)
    return partials, words + dec.finish()
