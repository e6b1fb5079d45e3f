"""Long connected-digit streams built from FSDD clips, with known word times.

A stream joins trimmed clips with random pauses, adds background noise at a random SNR and
applies random gains; every choice is drawn from one seeded ``numpy`` generator, so a
``(split, seconds, seed)`` triple always gives the same audio and the same ground truth.

Definitions (documented in the pipeline README):

- **Splits**: FSDD's standard split, takes 0-4 of every speaker are ``test``, takes 5-49
  ``train`` (all six speakers in both). Test streams use test takes only.
- **Word time**: a clip is trimmed to its speech, the span of its 10 ms frames whose energy
  is within ``top_db`` (30 dB) of the clip's loudest frame (first to last such frame); a
  word's ``start`` / ``end`` in the stream are the bounds of that trimmed clip.
- **Layout**: a lead-in pause, then clip, pause, clip, ... until the next clip would pass
  ``seconds``; then a trailing pause fills the stream to exactly ``seconds``. Pauses are
  uniform in ``[pause_min, pause_max]`` s. Clips are drawn uniformly with replacement from the
  split (a 10-minute stream holds ~650 digits; the test split has 300 clips).
- **Level**: each clip is first scaled to an RMS of ``clip_level_db`` dBFS (-20), then by a uniform
  ``[-clip_gain_db, +clip_gain_db]`` dB gain. FSDD's speakers were recorded at very different
  levels (mean clip RMS -22 dBFS for jackson, -44 dBFS for theo): without the normalisation a
  stream's SNR would put theo's digits ~20 dB deeper in the noise than the others'.
  ``clip_level_db = 0`` keeps the recorded levels.
- **Noise**: Gaussian noise, white or pink (1/f power, shaped in the frequency domain), chosen
  per stream, at an SNR uniform in ``[snr_min, snr_max]`` dB against the mean power of the
  stream's speech samples. No external noise data is used.
- Finally the whole stream is scaled so its peak is ``peak`` (0.5-0.95, drawn): a global
  gain, which leaves the SNR unchanged and keeps a 16-bit WAV unclipped.

Axis legend: n samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from longstream.pipelines.common import UserError

SAMPLE_RATE = 8000
TEST_TAKES = range(0, 5)
TRAIN_TAKES = range(5, 50)


@dataclass(frozen=True)
class Clip:
    """One FSDD recording, trimmed to its speech (float32 samples in [-1, 1])."""

    digit: int
    speaker: str
    take: int
    audio: np.ndarray  # (n,) float32, trimmed


@dataclass
class Word:
    """One digit of a stream; ``start`` / ``end`` in seconds (the trimmed clip's bounds)."""

    digit: int
    start: float
    end: float
    speaker: str = ""
    take: int = -1


@dataclass
class StreamSpec:
    """How a stream is built (see the module docstring); all times in seconds."""

    seconds: float = 60.0
    pause_min: float = 0.1
    pause_max: float = 1.0
    lead_min: float = 0.2
    lead_max: float = 1.0
    snr_min: float = 10.0
    snr_max: float = 30.0
    clip_gain_db: float = 6.0
    clip_level_db: float = -20.0  # RMS every clip is scaled to before its random gain (0 = recorded level)
    noise: str = "mix"  # white | pink | mix (one of the two, drawn per stream) | none
    peak_min: float = 0.5
    peak_max: float = 0.95


@dataclass
class Stream:
    audio: np.ndarray  # (n,) float32
    words: list[Word] = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE
    info: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def digits(self) -> list[int]:
        return [w.digit for w in self.words]

    def truth(self) -> dict:
        """Ground truth as JSON-able data (the ``*.truth.json`` next to a written stream)."""
        return {"sample_rate": self.sample_rate, "seconds": self.seconds, "info": self.info,
                "text": " ".join(str(d) for d in self.digits),
                "words": [asdict(w) for w in self.words]}


def trim_bounds(audio: np.ndarray, sr: int = SAMPLE_RATE, top_db: float = 30.0, frame_ms: float = 10.0) -> tuple[int, int]:
    """``(start, end)`` sample bounds of the speech in a clip: first to last 10 ms frame whose
    energy is within ``top_db`` of the loudest frame's."""
    hop = max(1, int(sr * frame_ms / 1000))
    n = len(audio) // hop
    if n == 0:
        return 0, len(audio)
    energy = (audio[: n * hop].astype(np.float64).reshape(n, hop) ** 2).mean(1)  # (frames,)
    db = 10 * np.log10(np.maximum(energy, 1e-12))
    keep = np.flatnonzero(db >= db.max() - top_db)
    return int(keep[0] * hop), int(min(len(audio), (keep[-1] + 1) * hop))


def fsdd_dir(root: str | Path | None = None) -> Path:
    from longstream.pipelines.datasets import dataset_path

    return Path(root) if root is not None else dataset_path("fsdd")


def load_clips(split: str, root: str | Path | None = None, *, speakers: list[str] | None = None,
               top_db: float = 30.0) -> list[Clip]:
    """Every FSDD clip of ``split`` (``train`` = takes 5-49, ``test`` = takes 0-4), trimmed."""
    import soundfile as sf

    takes = {"train": TRAIN_TAKES, "test": TEST_TAKES}.get(split)
    if takes is None:
        raise UserError(f"unknown split {split!r}; use train or test")
    clips = []
    for path in sorted(fsdd_dir(root).glob("*.wav")):
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            continue
        digit, speaker, take = int(parts[0]), parts[1], int(parts[2])
        if take not in takes or (speakers and speaker not in speakers):
            continue
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr != SAMPLE_RATE:
            raise UserError(f"{path}: sample rate {sr} Hz, FSDD clips are {SAMPLE_RATE} Hz; restore the original file")
        audio = audio.mean(1)
        lo, hi = trim_bounds(audio, sr, top_db)
        clips.append(Clip(digit, speaker, take, np.ascontiguousarray(audio[lo:hi])))
    if not clips:
        raise UserError(f"no FSDD clips of split {split!r} under {fsdd_dir(root)}; "
                        "put the recordings/*.wav files of FSDD there (see the speech README)")
    return clips


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)  # pink: power ~ 1/f, so amplitude ~ 1/sqrt(f)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    return pink / max(pink.std(), 1e-12)


def make_stream(clips: list[Clip], spec: StreamSpec, seed: int) -> Stream:
    """One stream of ``spec.seconds`` from ``clips`` (see the module docstring)."""
    if spec.seconds <= 0 or spec.pause_min < 0 or spec.pause_max < spec.pause_min or not clips:
        raise UserError("a stream needs seconds > 0, 0 <= pause_min <= pause_max and at least one clip")
    if spec.noise not in ("white", "pink", "mix", "none"):
        raise UserError(f"unknown noise {spec.noise!r}; use white, pink, mix or none")
    rng = np.random.default_rng(seed)
    sr = SAMPLE_RATE
    total = int(round(spec.seconds * sr))
    audio = np.zeros(total, np.float64)
    speech = np.zeros(total, bool)
    words: list[Word] = []
    pos = int(rng.uniform(spec.lead_min, spec.lead_max) * sr)
    while True:
        clip = clips[int(rng.integers(len(clips)))]
        n = len(clip.audio)
        if pos + n > total:
            break
        gain = 10 ** (rng.uniform(-spec.clip_gain_db, spec.clip_gain_db) / 20)
        if spec.clip_level_db:
            rms = float(np.sqrt((clip.audio.astype(np.float64) ** 2).mean()))
            gain *= 10 ** (spec.clip_level_db / 20) / max(rms, 1e-8)
        audio[pos : pos + n] = clip.audio * gain
        speech[pos : pos + n] = True
        words.append(Word(clip.digit, pos / sr, (pos + n) / sr, clip.speaker, clip.take))
        pos += n + int(rng.uniform(spec.pause_min, spec.pause_max) * sr)
    kind = spec.noise if spec.noise != "mix" else ("white", "pink")[int(rng.integers(2))]
    snr = float(rng.uniform(spec.snr_min, spec.snr_max))
    if kind != "none" and speech.any():
        p_speech = float((audio[speech] ** 2).mean())
        audio += _noise(kind, total, rng) * np.sqrt(p_speech / 10 ** (snr / 10))
    peak = float(np.abs(audio).max()) or 1.0
    audio *= rng.uniform(spec.peak_min, spec.peak_max) / peak
    info = {"seed": seed, "noise": kind, "snr_db": round(snr, 3), "n_words": len(words)}
    return Stream(audio.astype(np.float32), words, sr, info)


def write_stream(stream: Stream, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (16-bit WAV) and ``<path stem>.truth.json``; returns both paths."""
    import io

    import soundfile as sf

    from longstream.pipelines.common import atomic_write_bytes, dumps_strict

    path = Path(path)
    buf = io.BytesIO()
    sf.write(buf, stream.audio, stream.sample_rate, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())
    truth = path.with_suffix(".truth.json")
    atomic_write_bytes(truth, (dumps_strict(stream.truth(), indent=1) + "\n").encode())
    return path, truth
