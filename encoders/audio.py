"""Audio encoders: files -> mono waveforms -> token streams for a sequence backbone.

- :func:`load_audio` — decode a file with libsndfile (``soundfile``: WAV, FLAC, OGG/Vorbis,
  MP3 with libsndfile >= 1.1) or, when libsndfile cannot read it and PyAV is installed, with
  FFmpeg (``av``); mix down to mono and resample with ``torchaudio.functional.resample``.
  torchaudio's own I/O is deprecated and not used: torchaudio serves transforms only.
  Problems a file can have (empty, corrupt, silent, too long, non-finite samples) raise
  :class:`AudioError` (a ``ValueError`` with a ``kind``); pipelines turn it into their
  user-facing error with the file name and a fix.
- :class:`LogMel` — log-mel filterbank features (``torchaudio.transforms.MelSpectrogram``,
  ``center=False``): frame ``t`` covers samples ``[t * hop, t * hop + win)``, so the features
  of a long signal fed in chunks through :meth:`LogMel.stream` equal the features of the
  whole signal (:class:`FrameStream` keeps fewer than ``win`` samples between chunks:
  constant memory). Frame counts: :meth:`LogMel.num_frames`.
- :class:`SpecAugment` — frequency and time masking for training (Park et al.,
  "SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition",
  Interspeech 2019), with ``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking``;
  masks never reach padded frames' neighbours beyond each clip's own length.
- :class:`RawWaveStem` — raw-waveform tokens for SSMs (as S4 classifies raw Speech Commands,
  Gu et al., "Efficiently Modeling Long Sequences with Structured State Spaces", ICLR 2022):
  frames of ``kernel`` samples every ``stride`` samples, linearly projected to ``d``
  (a strided ``Conv1d``; ``kernel = stride = 1`` is one token per sample). Same framing
  rule as :class:`LogMel`, so it streams the same way.

Axis legend: b batch, t samples, l frames (tokens), m mel bins, d model width.
Waveforms are float32 ``(B, T)`` in [-1, 1] (full scale), right-padded with ``lengths``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AudioError",
    "AudioInfo",
    "load_audio",
    "decode_audio",
    "to_mono",
    "resample",
    "num_frames",
    "FrameStream",
    "LogMel",
    "SpecAugment",
    "RawWaveStem",
]

MAX_ABS_SAMPLE = 1e3
"""Largest |sample| accepted from a float-encoded file (full scale is 1.0); beyond it the
file is garbage (a float WAV holding 1e30), not loud speech, and log-mel would overflow."""


class AudioError(ValueError):
    """A file that cannot be used as audio. ``kind`` is one of ``missing``, ``empty``,
    ``corrupt``, ``too_long``, ``silent``, ``non_finite``, ``too_short``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`load_audio` read: the file's own rate, channels and duration."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    backend: str  # "soundfile" or "pyav"

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _decode_soundfile(path: Path, max_seconds: float | None) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    info = sf.info(str(path))  # raises on undecodable files before anything is read
    if max_seconds is not None and info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
        raise AudioError("too_long", f"{info.frames / info.samplerate:.1f} s of audio is longer than the "
                                     f"{max_seconds:g} s limit")
    data, sr = sf.read(str(path), dtype="float64", always_2d=True)  # (t, channels); float64 keeps 1e308
    return torch.from_numpy(data.T.copy()), int(sr)  # (channels, t)


def _decode_pyav(path: Path, max_seconds: float | None) -> tuple[torch.Tensor, int]:
    import av  # optional (pip install av): FFmpeg for what libsndfile lacks (m4a, aac, opus in mp4, ...)
    import numpy as np

    chunks, sr, n = [], 0, 0
    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("corrupt", "the file has no audio stream")
        for frame in container.decode(stream):
            a = frame.to_ndarray().astype(np.float64)  # (channels, t) planar or (1, t * channels) packed
            if not frame.format.is_planar:
                a = a.reshape(-1, len(frame.layout.channels)).T
            if frame.format.name.startswith(("s16", "s32", "u8")):
                a = a / float(2 ** (8 * frame.format.bytes - 1))
            sr = frame.sample_rate
            chunks.append(a)
            n += a.shape[1]
            if max_seconds is not None and sr and n / sr > max_seconds:
                raise AudioError("too_long", f"the audio is longer than the {max_seconds:g} s limit")
    if not chunks:
        return torch.zeros(1, 0, dtype=torch.float64), sr or 1
    return torch.from_numpy(np.concatenate(chunks, axis=1)), int(sr)


def decode_audio(path: str | Path, *, max_seconds: float | None = None) -> tuple[Tensor, AudioInfo]:
    """Decode ``path`` to float64 ``(channels, t)`` at its own sample rate (no checks on content)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError("empty", "the file is empty (0 bytes)")
    try:
        x, sr = _decode_soundfile(path, max_seconds)
        backend = "soundfile"
    except AudioError:
        raise
    except Exception as sf_err:  # libsndfile could not read it: try FFmpeg if it is installed
        try:
            import av  # noqa: F401
        except ImportError:
            raise AudioError("corrupt", f"not a readable audio file (libsndfile: {_short(sf_err)})") from None
        try:
            x, sr = _decode_pyav(path, max_seconds)
        except AudioError:
            raise
        except Exception as av_err:
            raise AudioError("corrupt", f"not a readable audio file (libsndfile: {_short(sf_err)}; "
                                        f"FFmpeg: {_short(av_err)})") from None
        backend = "pyav"
    return x, AudioInfo(str(path), sr, int(x.shape[0]), int(x.shape[1]), backend)


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if ": " in msg and msg.startswith("Error opening"):  # soundfile: "Error opening 'PATH': Format not recognised."
        msg = msg.rsplit(": ", 1)[1]
    return msg[:160]


def to_mono(x: Tensor) -> Tensor:
    """``(channels, t) -> (t,)``: the mean of the channels (a plain mix-down)."""
    return x.mean(0) if x.dim() == 2 else x


def resample(x: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """Band-limited resampling along the last axis (``torchaudio.functional.resample``)."""
    if orig_sr == target_sr:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, orig_sr, target_sr)


def load_audio(
    path: str | Path,
    target_sr: int | None = None,
    *,
    max_seconds: float | None = 600.0,
    min_seconds: float = 0.0,
    silence_threshold: float = 1e-4,
) -> tuple[Tensor, int]:
    """Read an audio file as a mono float32 waveform ``(t,)`` at ``target_sr`` (or its own rate).

    Raises :class:`AudioError` for a missing, empty or corrupt file, one longer than
    ``max_seconds`` (checked from the header before decoding; ``None`` = no cap), shorter than
    ``min_seconds``, one whose samples are not finite or beyond ±:data:`MAX_ABS_SAMPLE`, and
    a silent one (peak below ``silence_threshold`` of full scale; 0 disables the check).
    Returns ``(waveform, sample_rate)``.
    """
    x, info = decode_audio(path, max_seconds=max_seconds)
    if info.frames == 0:
        raise AudioError("empty", "the file holds no audio samples")
    bad = ~torch.isfinite(x)
    if bad.any():
        c, t = (int(i) for i in bad.nonzero()[0])
        raise AudioError("non_finite", f"sample {t} (at {t / info.sample_rate:.3f} s, channel {c}) is "
                                       f"{float(x[c, t])!r}, not a finite number")
    peak = float(x.abs().max())
    if peak > MAX_ABS_SAMPLE:
        c, t = (int(i) for i in (x.abs() == peak).nonzero()[0])
        raise AudioError("non_finite", f"sample {t} (at {t / info.sample_rate:.3f} s, channel {c}) is "
                                       f"{float(x[c, t]):g}, far outside the audio range [-1, 1]")
    if info.seconds < min_seconds:
        raise AudioError("too_short", f"{info.seconds:.3f} s of audio is shorter than the {min_seconds:g} s minimum")
    wave = to_mono(x).to(torch.float32)
    if silence_threshold > 0 and float(wave.abs().max()) < silence_threshold:
        raise AudioError("silent", f"the audio is silent (peak {float(wave.abs().max()):.2g} of full scale)")
    sr = info.sample_rate
    if target_sr is not None and target_sr != sr:
        wave = resample(wave, sr, target_sr)
        sr = target_sr
    return wave.contiguous(), sr


# ----------------------------------------------------------------------------- framing
def num_frames(n_samples: int | Tensor, win: int, hop: int) -> int | Tensor:
    """Frames of ``win`` samples every ``hop`` samples that fit in ``n_samples`` (no padding)."""
    if isinstance(n_samples, Tensor):
        return torch.where(n_samples >= win, (n_samples - win) // hop + 1, torch.zeros_like(n_samples))
    return 0 if n_samples < win else (n_samples - win) // hop + 1


class FrameStream:
    """Chunk buffer for ``center=False`` framing: :meth:`push` returns the samples of every
    frame completed by the new chunk (starting at a frame boundary) and keeps the rest.

    Holds fewer than ``win + hop`` samples between calls, whatever the stream length.
    ``frames_done`` counts frames emitted so far (frame ``k`` starts at sample ``k * hop``).
    """

    def __init__(self, win: int, hop: int, batch_shape: tuple[int, ...] = ()) -> None:
        self.win, self.hop = win, hop
        self.buf = torch.zeros(*batch_shape, 0)
        self.frames_done = 0
        self.samples_seen = 0

    def push(self, chunk: Tensor) -> Tensor:
        """Append ``chunk`` (..., t); return ``(..., t')`` covering the newly complete frames
        (``t' = (k - 1) * hop + win`` for ``k`` new frames; empty when none)."""
        buf = torch.cat([self.buf.to(chunk), chunk], -1)
        self.samples_seen += chunk.shape[-1]
        k = num_frames(buf.shape[-1], self.win, self.hop)
        if k == 0:
            self.buf = buf
            return buf[..., :0]
        span = buf[..., : (k - 1) * self.hop + self.win]
        self.buf = buf[..., k * self.hop :].clone()  # next frame starts at k * hop
        self.frames_done += k
        return span


def slaney_mel(hz: Tensor) -> Tensor:
    """Hz -> mel on Slaney's scale (librosa / torchaudio ``mel_scale="slaney"``)."""
    log = 15.0 + torch.log(hz.clamp_min(1e-9) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz >= 1000.0, log, hz / (200.0 / 3))


def slaney_hz(mel: Tensor) -> Tensor:
    """mel -> Hz on Slaney's scale (inverse of :func:`slaney_mel`)."""
    return torch.where(mel >= 15.0, 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0)), mel * (200.0 / 3))


class LogMel(nn.Module):
    """Log-mel filterbank: waveform ``(B, T)`` -> features ``(B, L, n_mels)``.

    ``log(mel_power + eps)`` of a Hann-windowed STFT with ``n_fft = win`` (unless given) and
    ``center=False``: ``L = 1 + (T - win) // hop`` frames (0 when ``T < win``), frame ``t``
    covering samples ``[t * hop, t * hop + win)``. Streaming: :meth:`stream` with a
    :meth:`stream_state` gives exactly the frames of the whole signal.
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0,
                 n_fft: int = 0, f_min: float = 20.0, f_max: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        import torchaudio.transforms as AT

        self.sample_rate = int(sample_rate)
        self.win = int(round(sample_rate * win_ms / 1000))
        self.hop = int(round(sample_rate * hop_ms / 1000))
        if self.win < 2 or self.hop < 1:
            raise ValueError(f"window {win_ms} ms / hop {hop_ms} ms are too short at {sample_rate} Hz")
        self.n_fft = int(n_fft) or self.win
        if self.n_fft < self.win:
            raise ValueError(f"n_fft {self.n_fft} is shorter than the window ({self.win} samples)")
        self.n_mels = int(n_mels)
        self.eps = float(eps)
        self.mel = AT.MelSpectrogram(sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win,
                                     hop_length=self.hop, f_min=f_min, f_max=f_max or None, n_mels=self.n_mels,
                                     center=False, power=2.0, norm="slaney", mel_scale="slaney")
        edges = slaney_mel(torch.tensor([f_min, f_max or sample_rate / 2], dtype=torch.float64))
        pts = torch.linspace(float(edges[0]), float(edges[1]), self.n_mels + 2, dtype=torch.float64)
        self.register_buffer("centers", slaney_hz(pts[1:-1]).float(), persistent=False)  # band centres, Hz (warp)

    def num_frames(self, n_samples: int | Tensor) -> int | Tensor:
        return num_frames(n_samples, self.n_fft, self.hop)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wave (B, T)`` (or ``(T,)``), valid ``lengths (B,)`` in samples -> ``(feats (B, L, m), frames (B,))``."""
        if wave.dim() == 1:
            wave = wave[None]
        b, t = wave.shape
        lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths.long().cpu()
        if t < self.n_fft:  # not one full frame in the batch
            return wave.new_zeros(b, 0, self.n_mels), torch.zeros(b, dtype=torch.long)
        spec = self.mel(wave.float())  # (b, m, l)
        feats = torch.log(spec + self.eps).transpose(1, 2)  # (b, l, m)
        return feats.contiguous(), num_frames(lengths, self.n_fft, self.hop)

    def band_centers(self) -> Tensor:
        """Centre frequency (Hz) of each mel band ``(n_mels,)`` (Slaney's scale: linear to 1 kHz, then log)."""
        return self.centers

    def warp(self, feats: Tensor, alpha: Tensor) -> Tensor:
        """Vocal-tract length warp of log-mel ``feats (B, L, m)``: clip ``b`` becomes ``S(f / alpha[b])``
        (formants ``alpha`` times higher), read off the band centres by linear interpolation;
        frequencies outside the bank take the edge band."""
        c = self.centers
        b, l, m = feats.shape
        src = (c[None] / alpha.to(c)[:, None]).clamp(c[0], c[-1]).contiguous()  # (b, m) Hz
        j = torch.searchsorted(c, src).clamp(1, m - 1)
        w = ((src - c[j - 1]) / (c[j] - c[j - 1])).to(feats.dtype)[:, None]  # (b, 1, m)
        lo = feats.gather(2, (j - 1)[:, None].expand(b, l, m))
        hi = feats.gather(2, j[:, None].expand(b, l, m))
        return lo + w * (hi - lo)

    def stream_state(self, batch_shape: tuple[int, ...] = ()) -> FrameStream:
        return FrameStream(self.n_fft, self.hop, batch_shape)

    @torch.no_grad()
    def stream(self, chunk: Tensor, state: FrameStream) -> Tensor:
        """Features ``(..., k, m)`` of the ``k`` frames the new ``chunk (..., t)`` completes."""
        span = state.push(chunk)
        if span.shape[-1] < self.n_fft:
            return chunk.new_zeros(*chunk.shape[:-1], 0, self.n_mels)
        return torch.log(self.mel(span.float()) + self.eps).transpose(-1, -2)


class SpecAugment(nn.Module):
    """Frequency and time masks on ``(B, L, m)`` features in training mode (identity in eval).

    ``n_freq_masks`` bands of up to ``freq_mask`` bins and ``n_time_masks`` spans of up to
    ``time_mask`` frames (at most ``max_time_frac`` of each clip's valid frames) are set to
    ``fill`` (default: the batch mean, i.e. "no information" after normalisation). Every
    clip draws its own masks. Randomness comes from the global torch RNG (seed it, or pass
    ``generator`` state via ``torch.random.fork_rng``, for reproducible runs).
    """

    def __init__(self, freq_mask: int = 8, time_mask: int = 10, n_freq_masks: int = 2, n_time_masks: int = 2,
                 max_time_frac: float = 0.2) -> None:
        super().__init__()
        import torchaudio.transforms as AT

        self.n_freq, self.n_time, self.max_time_frac = n_freq_masks, n_time_masks, max_time_frac
        self.freq = AT.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask > 0 else None
        self.time_mask = time_mask

    def forward(self, feats: Tensor, frames: Tensor | None = None, fill: float = 0.0) -> Tensor:
        if not self.training:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # (b, 1, m, l): torchaudio's (..., freq, time)
        if self.freq is not None:
            for _ in range(self.n_freq):
                x = self.freq(x, mask_value=fill)
        x = x.squeeze(1).transpose(1, 2)  # (b, l, m)
        if self.time_mask > 0 and self.n_time > 0:
            b, l = x.shape[:2]
            n = frames.to(x.device).float() if frames is not None else torch.full((b,), float(l), device=x.device)
            width_cap = torch.clamp(torch.minimum(n * self.max_time_frac, torch.tensor(float(self.time_mask))), min=0)
            pos = torch.arange(l, device=x.device)[None]  # (1, l)
            for _ in range(self.n_time):
                w = torch.floor(torch.rand(b, device=x.device) * (width_cap + 1))  # (b,)
                start = torch.floor(torch.rand(b, device=x.device) * torch.clamp(n - w, min=0) + 0.0)
                m = (pos >= start[:, None]) & (pos < (start + w)[:, None])
                x = x.masked_fill(m[..., None], fill)
        return x


class RawWaveStem(nn.Module):
    """Raw-waveform tokens: ``(B, T)`` -> ``(B, L, d)`` with ``L = 1 + (T - kernel) // stride``.

    A ``Conv1d(1, d, kernel, stride)`` without padding (frame ``t`` sees samples
    ``[t * stride, t * stride + kernel)``), then LayerNorm. ``kernel = stride = 1`` is the
    S4 setting of one token per sample; a few ms per token keeps CPU training fast.
    ``scale`` multiplies the waveform first (full scale -> unit-ish variance).
    """

    def __init__(self, d_model: int, kernel: int = 32, stride: int = 16, scale: float = 10.0) -> None:
        super().__init__()
        if kernel < stride or stride < 1:
            raise ValueError(f"raw stem: kernel ({kernel}) must be >= stride ({stride}) >= 1")
        self.kernel, self.stride, self.scale = int(kernel), int(stride), float(scale)
        self.conv = nn.Conv1d(1, d_model, self.kernel, stride=self.stride)
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.conv.weight, std=1.0 / math.sqrt(self.kernel))

    def num_frames(self, n_samples: int | Tensor) -> int | Tensor:
        return num_frames(n_samples, self.kernel, self.stride)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``wave (B, T)`` + ``lengths (B,)`` -> ``(tokens (B, L, d), frames (B,))``."""
        if wave.dim() == 1:
            wave = wave[None]
        b, t = wave.shape
        lengths = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths.long().cpu()
        if t < self.kernel:
            return wave.new_zeros(b, 0, self.conv.out_channels), torch.zeros(b, dtype=torch.long)
        h = self.conv((wave.float() * self.scale)[:, None])  # (b, d, l)
        return self.norm(h.transpose(1, 2)), num_frames(lengths, self.kernel, self.stride)

    def stream_state(self, batch_shape: tuple[int, ...] = ()) -> FrameStream:
        return FrameStream(self.kernel, self.stride, batch_shape)

    @torch.no_grad()
    def stream(self, chunk: Tensor, state: FrameStream) -> Tensor:
        """Tokens ``(B, k, d)`` of the frames completed by ``chunk (B, t)``."""
        span = state.push(chunk)
        if span.shape[-1] < self.kernel:
            return chunk.new_zeros(chunk.shape[0], 0, self.conv.out_channels)
        return self.forward(span)[0]


class SpecConvStem(nn.Module):
    """Two 3x3 convolutions over (time, frequency) of log-mel ``(B, L, m)`` -> tokens ``(B, L, d)``.

    The keyword-spotting stem: filters local in frequency, so a formant moved by a few bands
    (another speaker's vocal tract) excites the same filter a few bands along. Time keeps its
    resolution (stride 1, one token per frame); the second convolution halves the frequency
    axis; a ``Linear(channels * ceil(m / 2), d)`` maps each frame to a token. Frames outside
    ``mask (B, L)`` are zeroed before each convolution, so a padded batch gives every clip
    the tokens it gets alone. On the speech LOSO folds it did not beat a ``Linear`` per frame
    (``pipelines/speech/README.md``).
    """

    def __init__(self, n_mels: int, d_model: int, channels: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(1, 2), padding=1)
        self.proj = nn.Linear(channels * ((n_mels + 1) // 2), d_model)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        keep = mask[:, None, :, None].to(feats.dtype)  # (b, 1, l, 1)
        h = F.gelu(self.conv1(feats[:, None] * keep))  # (b, c, l, m)
        h = F.gelu(self.conv2(h * keep))  # (b, c, l, m / 2)
        return self.proj(h.permute(0, 2, 1, 3).flatten(2))  # (b, l, d)
