"""The streaming engine shared by ``transcribe``, ``stream``, evaluation and the demo.

:class:`StreamingRecognizer` takes audio in chunks of any size (as a microphone delivers
it) and carries every state across chunks: the log-mel framer's leftover samples
(``LogMel.stream``), the frame that waits for its stacking partner, the backbone state, and
the CTC decoder's open segments. Its memory does not grow with the audio length.
:class:`BlockResampler` converts other sample rates to 8 kHz block by block (overlap with
context, so the result equals resampling the whole file).

Axis legend: t samples, f frames, l tokens, m mel bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from longstream.pipelines.common import check_finite_output

from .ctc import Partial, StreamingCTCDecoder, WordTime
from .ctc_model import N_CLASSES, CTCDigitModel
from .streams import SAMPLE_RATE


@dataclass
class ChunkResult:
    partials: list[Partial] = field(default_factory=list)  # digits first emitted in this chunk
    words: list[WordTime] = field(default_factory=list)  # words whose times became final
    audio_seconds: float = 0.0  # audio fed so far


class StreamingRecognizer:
    """Chunked, stateful recognition with one model (one stream at a time)."""

    def __init__(self, model: CTCDigitModel, *, grace: int = 8, source: str = "the audio") -> None:
        self.model = model.eval()
        self.grace = grace
        self.source = source
        self.reset()

    def reset(self) -> None:
        m = self.model
        self.framer = m.frontend.stream_state((1,))
        self.carry = torch.zeros(0, m.frontend.n_mels)  # frames waiting for a full stack
        self.state = None
        self.samples = 0
        self.tokens = 0
        mc = m.cfg.model
        self.decoder = StreamingCTCDecoder(token_sec=m.token_sec, first_time=m.token_center(0),
                                           avail_time=m.token_avail(0), vad_threshold=mc.vad_threshold,
                                           start_offset=mc.start_offset, end_offset=mc.end_offset, grace=self.grace)

    @torch.no_grad()
    def feed_logits(self, samples: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs of the tokens completed by ``samples`` (t,): CTC logits (l, N_CLASSES), speech logits (l, 2)."""
        m = self.model
        chunk = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(1, -1)
        self.samples += chunk.shape[1]
        feats = torch.cat([self.carry, m.frontend.stream(chunk, self.framer)[0]])  # (f, m)
        usable = feats.shape[0] - feats.shape[0] % m.stack
        self.carry = feats[usable:].clone()
        if usable == 0:
            return torch.zeros(0, N_CLASSES), torch.zeros(0, 2)
        logits, vad, self.state = m.forward_tokens(m.tokens(feats[None, :usable]), self.state)
        check_finite_output(logits, source=f"{self.source} (at {self.samples / SAMPLE_RATE:.2f} s)",
                            model_input=chunk, what="CTC scores")
        self.tokens += usable // m.stack
        return logits[0], vad[0]

    def feed(self, samples: np.ndarray | torch.Tensor) -> ChunkResult:
        """Feed 8 kHz samples; returns the new partial digits and the words finalized meanwhile."""
        logits, vad = self.feed_logits(samples)
        if logits.shape[0] == 0:
            return ChunkResult(audio_seconds=self.samples / SAMPLE_RATE)
        prob, lab = torch.softmax(logits.float(), -1).max(-1)
        speech = torch.softmax(vad.float(), -1)[:, 1]
        partials, words = self.decoder.push(lab.numpy(), prob.numpy(), speech.numpy())
        return ChunkResult(partials, words, self.samples / SAMPLE_RATE)

    def finish(self) -> ChunkResult:
        """End of stream: the words still waiting for their end."""
        return ChunkResult([], self.decoder.finish(), self.samples / SAMPLE_RATE)

    def run(self, chunks: Iterator[np.ndarray]) -> list[WordTime]:
        """All words of a stream given as chunks (the engine behind ``transcribe``)."""
        words: list[WordTime] = []
        for c in chunks:
            words += self.feed(c).words
        return words + self.finish().words


def chunks_of(audio: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for i in range(0, len(audio), chunk):
        yield audio[i : i + chunk]


def recognize_array(model: CTCDigitModel, audio: np.ndarray, chunk_ms: float = 200.0) -> list[WordTime]:
    """Words of an 8 kHz array, fed in ``chunk_ms`` chunks."""
    return StreamingRecognizer(model).run(chunks_of(audio, max(1, int(SAMPLE_RATE * chunk_ms / 1000))))


class BlockResampler:
    """Resample a stream block by block to ``target`` Hz (``torchaudio.functional.resample``).

    Input is cut into whole periods of ``orig / gcd`` samples and resampled with ``ctx`` input
    samples of context on each side (more than the sinc kernel's reach), whose outputs are
    dropped, so the joined output equals resampling the whole signal at once (up to float
    rounding). Output is delayed by ``ctx`` input samples until :meth:`flush`.
    """

    def __init__(self, orig: int, target: int = SAMPLE_RATE, lowpass_filter_width: int = 6) -> None:
        g = math.gcd(orig, target)
        self.orig, self.target = orig, target
        self.ui, self.uo = orig // g, target // g
        reach = lowpass_filter_width * orig / min(orig, target) / 0.99 + 2  # kernel half-width, input samples
        self.ctx = int(math.ceil(reach / self.ui)) * self.ui
        self.lpw = lowpass_filter_width
        self.buf = np.zeros(0, np.float32)  # input samples from absolute index self.base
        self.base = 0
        self.done = 0  # absolute input index up to which output was emitted

    def _run(self, seg: np.ndarray) -> np.ndarray:
        import torchaudio.functional as AF

        if self.orig == self.target:
            return seg
        return AF.resample(torch.from_numpy(seg), self.orig, self.target, lowpass_filter_width=self.lpw).numpy()

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float32)])
        end_abs = self.base + len(self.buf)
        stop = end_abs if final else (max(self.done, end_abs - self.ctx) // self.ui) * self.ui
        if stop <= self.done:
            return np.zeros(0, np.float32)
        lo = max(self.base, self.done - self.ctx)
        hi = end_abs if final else min(end_abs, stop + self.ctx)
        y = self._run(self.buf[lo - self.base : hi - self.base])
        skip = (self.done - lo) * self.uo // self.ui
        n_out = math.ceil((stop - self.done) * self.uo / self.ui)
        out = y[skip : skip + n_out]
        self.done = stop
        keep_from = max(self.base, self.done - self.ctx)
        self.buf = self.buf[keep_from - self.base :]
        self.base = keep_from
        return out

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), final=True)
