"""Free Spoken Digit Dataset (FSDD): listing, splits, audio loading with user errors, augmentation.

FSDD (Jackson et al., 2018, CC BY-SA 4.0): ``recordings/{digit}_{speaker}_{take}.wav``,
8 kHz mono, 6 speakers x 10 digits x 50 takes. Found through
``longstream.pipelines.datasets.dataset_path("fsdd")`` (``$LONGSTREAM_DATA``) or ``--data DIR``.

:func:`read_audio` is the one way this pipeline reads a user's file: it wraps
:func:`longstream.encoders.audio.load_audio` and turns its :class:`AudioError` into one
:class:`UserError` naming the file and the fix. Training augmentation
(:func:`augment_batch`) draws from an explicit ``torch.Generator``, so a batch is a function
of the seed and the step (resumable runs are bit-identical).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from longstream.encoders.audio import AudioError, load_audio
from longstream.pipelines.common import UserError, pad_sequences

from .config import AugmentConfig, DataConfig

NAME_RE = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au")
MAX_INPUT_SECONDS = 600.0  # predict / demo: longer files are refused (use B's `stream` for long audio)

_FIXES = {
    "missing": "check the path",
    "empty": "record or export the audio again",
    "corrupt": "give a WAV, FLAC, OGG or MP3 file (other formats need PyAV: `pip install av`)",
    "too_long": "cut it into shorter pieces",
    "too_short": "give a longer recording",
    "silent": "check the microphone level or the file",
    "non_finite": "re-export the audio with samples in [-1, 1]",
}


def read_audio_sr(path: str | Path, sample_rate: int | None = None, *, what: str = "audio file",
                  max_seconds: float | None = MAX_INPUT_SECONDS, display: str | None = None) -> tuple[Tensor, int]:
    """``(mono float32 (t,), rate)`` at ``sample_rate`` (``None``: the file's own rate); any problem
    with the file is one :class:`UserError` naming it (``display`` or the path) and the fix."""
    name = display or str(path)
    try:
        return load_audio(path, sample_rate, max_seconds=max_seconds)
    except AudioError as e:
        fix = _FIXES.get(e.kind, "check the file")
        if e.kind == "too_long":
            fix = f"cut it into pieces under {max_seconds:g} s"
        raise UserError(f"{what} {name}: {e}; {fix}") from None


def read_audio(path: str | Path, sample_rate: int, *, what: str = "audio file",
               max_seconds: float | None = MAX_INPUT_SECONDS, display: str | None = None) -> Tensor:
    """Mono float32 ``(t,)`` at ``sample_rate``; see :func:`read_audio_sr`."""
    return read_audio_sr(path, sample_rate, what=what, max_seconds=max_seconds, display=display)[0]


@dataclass(frozen=True)
class Clip:
    path: Path
    digit: int
    speaker: str
    take: int


def fsdd_root(root: str | None = None) -> Path:
    """The recordings folder: ``root`` if given, else the registered dataset path."""
    if root:
        p = Path(root)
        if p.is_dir() and (p / "recordings").is_dir():
            p = p / "recordings"
        if not p.is_dir():
            raise UserError(f"FSDD folder {root} does not exist; give the free-spoken-digit-dataset "
                            "recordings/ folder (files like 7_jackson_0.wav)")
        return p
    from longstream.pipelines.datasets import dataset_path

    return Path(dataset_path("fsdd"))


def list_clips(root: str | Path | None = None) -> list[Clip]:
    """Every ``{digit}_{speaker}_{take}.wav`` in the folder, sorted by (speaker, digit, take)."""
    folder = fsdd_root(str(root) if root else None)
    clips = []
    for p in folder.iterdir():
        m = NAME_RE.match(p.name)
        if m:
            clips.append(Clip(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not clips:
        raise UserError(f"FSDD folder {folder} holds no files named like 7_jackson_0.wav; give the "
                        "free-spoken-digit-dataset recordings/ folder")
    return sorted(clips, key=lambda c: (c.speaker, c.digit, c.take))


def split_clips(clips: list[Clip], cfg: DataConfig, split: str) -> list[Clip]:
    """The clips of ``split`` (train / val / test) under ``cfg.split`` (see :mod:`.config`)."""
    if cfg.split == "standard":
        t, v = cfg.test_takes, cfg.val_takes
        sel = {"test": lambda c: c.take < t, "val": lambda c: t <= c.take < t + v,
               "train": lambda c: c.take >= t + v}[split]
    elif cfg.split.startswith("loso:"):
        spk = cfg.split[5:]
        known = sorted({c.speaker for c in clips})
        if spk not in known:
            raise UserError(f"--data.split {cfg.split}: unknown speaker {spk!r}; known: {', '.join(known)}")
        sel = {"test": lambda c: c.speaker == spk, "val": lambda c: False,
               "train": lambda c: c.speaker != spk}[split]
    else:
        raise UserError(f"--data.split {cfg.split!r}: use 'standard' or 'loso:<speaker>' "
                        f"(speakers: {', '.join(SPEAKERS)})")
    out = [c for c in clips if sel(c)]
    if cfg.limit > 0 and len(out) > cfg.limit:  # an even spread over speakers / digits, deterministic
        step = len(out) / cfg.limit
        out = [out[int(i * step)] for i in range(cfg.limit)]
    return out


def load_split(cfg: DataConfig, split: str, root: str | None = None) -> tuple[list[Tensor], Tensor, list[Clip]]:
    """``(waves, labels (N,), clips)`` of ``split``: each wave mono float32 at ``cfg.sample_rate``."""
    clips = split_clips(list_clips(root or cfg.root or None), cfg, split)
    waves = [read_audio(c.path, cfg.sample_rate, what="FSDD clip", max_seconds=30.0) for c in clips]
    return waves, torch.tensor([c.digit for c in clips], dtype=torch.long), clips


def voiced_region(wave: Tensor, sr: int, hop_ms: float = 10.0, rel_db: float = -40.0) -> tuple[int, int]:
    """``(start, end)`` sample indices spanning the 10 ms frames within ``rel_db`` dB of the loudest one."""
    hop = max(1, int(sr * hop_ms / 1000))
    n = len(wave) // hop
    if n == 0:
        return 0, len(wave)
    e = wave[: n * hop].reshape(n, hop).pow(2).mean(1).clamp_min(1e-12)
    on = (10 * torch.log10(e / e.max()) > rel_db).nonzero().flatten()
    return int(on[0]) * hop, min(len(wave), int(on[-1] + 1) * hop)


def trim_silence(wave: Tensor, sr: int, rel_db: float = -40.0, margin_ms: float = 20.0) -> Tensor:
    """The clip without leading / trailing silence (40 dB below its peak), as FSDD's recordings
    are cut; ``margin_ms`` of context is kept on each side."""
    a, b = voiced_region(wave, sr, rel_db=rel_db)
    m = int(sr * margin_ms / 1000)
    return wave[max(0, a - m) : min(len(wave), b + m)]


def collate(waves: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-padded ``(B, T)`` waveforms and their ``lengths (B,)`` in samples."""
    x, mask = pad_sequences(list(waves), pad_value=0.0, what="waveforms")
    return x, mask.sum(1)


# ----------------------------------------------------------------------------- augmentation
def _speed(wave: Tensor, factor: float, sr: int) -> Tensor:
    """Play ``factor`` times faster (pitch and tempo together, like Kaldi's speed perturbation)."""
    import torchaudio.functional as AF

    orig = 100
    new = int(round(orig / factor))
    if new == orig:
        return wave
    g = math.gcd(orig, new)
    return AF.resample(wave, orig // g, new // g)


def augment_wave(wave: Tensor, aug: AugmentConfig, sr: int, g: torch.Generator, max_samples: int) -> Tensor:
    """One training clip: speed, time shift, crop to ``max_samples``, gain, additive noise."""
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    if aug.speed > 0 and u() < aug.speed_prob:
        wave = _speed(wave, 1.0 + aug.speed * (2 * u() - 1), sr)
    shift = int(aug.shift_ms * sr / 1000 * u())
    if shift and u() < 0.5:
        wave = torch.cat([wave.new_zeros(shift), wave])  # delayed onset
    elif shift:
        wave = wave[min(shift, max(0, len(wave) - sr // 10)):]  # clipped onset, keep >= 100 ms
    if len(wave) > max_samples:  # a random window of the allowed length
        s = int(u() * (len(wave) - max_samples + 1))
        wave = wave[s : s + max_samples]
    if aug.gain_db > 0:
        wave = wave * 10 ** (aug.gain_db * (2 * u() - 1) / 20)
    if aug.noise_prob > 0 and u() < aug.noise_prob:
        snr = aug.noise_snr_db + aug.noise_snr_range * u()
        noise = torch.randn(len(wave), generator=g)
        if aug.noise_color > 0:  # low-pass (a > 0, "brown") to high-pass (a < 0, "blue") noise
            import torchaudio.functional as AF

            a = aug.noise_color * (2 * u() - 1)
            noise = AF.lfilter(noise[None], torch.tensor([1.0, -a]), torch.tensor([1.0, 0.0]), clamp=False)[0]
        p = wave.pow(2).mean().clamp_min(1e-10)
        wave = wave + noise * torch.sqrt(p / noise.pow(2).mean().clamp_min(1e-12) / 10 ** (snr / 10))
    return wave.clamp(-1.0, 1.0)


def augment_batch(waves: list[Tensor], aug: AugmentConfig, sr: int, max_seconds: float,
                  g: torch.Generator) -> list[Tensor]:
    return [augment_wave(w, aug, sr, g, int(max_seconds * sr)) for w in waves]


def crop(waves: list[Tensor], max_samples: int) -> list[Tensor]:
    return [w[:max_samples] for w in waves]
