"""Speech pipeline config: dataclasses, presets as functions.

Task: classify a spoken digit (0-9) from audio. ``data.split`` picks the protocol:

- ``standard`` — FSDD's own split: takes ``0 .. test_takes - 1`` of every speaker and digit
  are the test set (300 clips), the rest train (2,700 clips);
- ``loso:<speaker>`` — leave one speaker out: train on the other five speakers, test on
  every clip of ``<speaker>`` (500 clips).

``model.frontend`` picks the input: ``logmel`` (log-mel frames, 10 ms hop, SpecAugment in
training) or ``raw`` (raw waveform, a strided ``Conv1d`` stem: one token per
``raw_stride`` samples). Dotted overrides address every field
(``--data.split loso:jackson --backbone.d_model 96``).

Presets: ``tiny`` (seconds, tests), ``tiny-raw``, ``release`` (log-mel + Mamba, the shipped
``speech/mamba-digits``), ``release-raw`` (raw waveform + S4D, ``speech/s4d-raw-digits``),
``loso`` / ``loso-raw`` (the release recipes, shorter, for the six leave-one-speaker-out folds
of ``benchmarks/speech.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longstream.backbones.config import BackboneConfig

FRONTENDS = ("logmel", "raw")


@dataclass
class DataConfig:
    root: str = ""  # FSDD recordings folder; "" = $LONGSTREAM_DATA/speech/fsdd/recordings
    split: str = "standard"  # standard | loso:<speaker>
    test_takes: int = 5  # standard split: takes 0..test_takes-1 are the test set
    val_takes: int = 0  # standard split: the next val_takes takes are held out for validation (0 = none)
    sample_rate: int = 8000  # every file is resampled to this rate
    max_seconds: float = 2.0  # training clips longer than this are cropped (random window)
    limit: int = 0  # >0: use only this many clips per split (tests)


@dataclass
class AugmentConfig:
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db] dB
    shift_ms: float = 100.0  # random leading silence / crop of up to this many ms
    speed: float = 0.1  # speed perturbation factor in [1 - speed, 1 + speed] (resampling)
    speed_prob: float = 0.5  # probability a clip is speed-perturbed
    noise_snr_db: float = 20.0  # additive noise at an SNR drawn in [noise_snr_db, noise_snr_db + noise_snr_range] dB
    noise_snr_range: float = 20.0
    noise_prob: float = 0.5
    noise_color: float = 0.0  # noise colour: one-pole filter y[n] = x[n] + a y[n-1], a ~ U(-c, c); 0 = white
    freq_mask: int = 6  # SpecAugment (log-mel front end only): max mel bins per mask
    n_freq_masks: int = 2
    time_mask: int = 8  # max frames per time mask
    n_time_masks: int = 2
    vtlp: float = 0.0  # log-mel front end: vocal-tract length perturbation, each clip's spectrum warped by a factor in [1 - vtlp, 1 + vtlp]


@dataclass
class ModelConfig:
    frontend: str = "logmel"  # logmel | raw
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    n_ceps: int = 0  # >0: keep the first n_ceps cepstral coefficients (DCT of the normalised log-mel, liftering away pitch detail); 0 = the log-mel bands
    conv_channels: int = 0  # >0: log-mel tokens from a 2-layer 3x3 conv stem with this many channels (encoders.audio.SpecConvStem); 0 = a Linear per frame
    norm: str = "utterance"  # log-mel normalisation: utterance (per-clip mean) | cmvn (per-clip mean and std) | global | speaker (per-speaker mean and std)
    raw_kernel: int = 32  # raw front end: samples per token window
    raw_stride: int = 16  # raw front end: samples between tokens (2 ms at 8 kHz)
    pool: str = "mean"  # common.POOLS
    hidden: int = 0  # classifier MLP width (0 = linear head)
    dropout: float = 0.1
    n_classes: int = 10
    label_smoothing: float = 0.05
    tta_warp: float = 0.0  # log-mel front end, eval: average the class probabilities over spectra warped by 1 - w, 1, 1 + w (0 = off)
    tta_n: int = 3  # number of warp factors spread evenly over [1 - tta_warp, 1 + tta_warp]


@dataclass
class TrainConfig:
    steps: int = 1500
    log_every: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    eval_every: int = 0  # validation every N steps (needs data.val_takes > 0); 0 = off
    save_every: int = 250
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(d_model=64, n_layers=4, pattern="M"))
    train: TrainConfig = field(default_factory=TrainConfig)


CONFIG_CLASS = Config


def tiny() -> Config:
    """Seconds on one CPU thread: 40 clips, a 16-wide one-layer Mamba (tests)."""
    return Config(
        data=DataConfig(limit=40, max_seconds=0.6),
        model=ModelConfig(n_mels=16, dropout=0.0),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="M", mixer_kwargs={"M": {"d_state": 4}}),
        train=TrainConfig(steps=8, batch_size=8, warmup_steps=2, save_every=4, log_every=1),
    )


def tiny_raw() -> Config:
    cfg = tiny()
    cfg.model.frontend = "raw"
    cfg.backbone = BackboneConfig(d_model=16, n_layers=1, pattern="S", mixer_kwargs={"S": {"d_state": 8}})
    return cfg


def release() -> Config:
    """``speech/mamba-digits``: log-mel + 4-layer Mamba (d 64), standard split."""
    return Config()


def release_raw() -> Config:
    """``speech/s4d-raw-digits``: raw waveform (10 ms windows every 5 ms) + 4-layer S4D (d 64), standard split."""
    return Config(
        model=ModelConfig(frontend="raw", raw_kernel=80, raw_stride=40),
        backbone=BackboneConfig(d_model=64, n_layers=4, pattern="S", mixer_kwargs={"S": {"d_state": 32}}),
        train=TrainConfig(steps=2500),
    )


def speaker_augment() -> AugmentConfig:
    """Stronger augmentation for unseen speakers: more speed perturbation (a crude vocal-tract
    length change), low-SNR coloured noise (other microphones and rooms)."""
    return AugmentConfig(speed=0.15, speed_prob=0.8, noise_snr_db=5.0, noise_snr_range=30.0, noise_prob=0.8,
                         noise_color=0.9)


def loso() -> Config:
    """Leave-one-speaker-out fold (``--data.split loso:<speaker>``): the release model with
    speaker-level normalisation (``norm=speaker``: each clip normalised by the log-mel profile
    of its speaker's clips, the test speaker's from its own unlabelled clips) and
    :func:`speaker_augment` (speed ±20%), 6,000 steps (the heavy augmentation needs the longer
    schedule: per-clip CMVN gave a 76.1% fold mean at 1,000 steps, 81.0% at 6,000)."""
    cfg = release()
    cfg.data.split = "loso:jackson"
    cfg.model.norm = "speaker"
    cfg.augment = speaker_augment()
    cfg.augment.speed = 0.2
    cfg.train.steps = 6000
    return cfg


def loso_raw() -> Config:
    cfg = release_raw()
    cfg.data.split = "loso:jackson"
    cfg.augment = speaker_augment()
    cfg.train.steps = 1000
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": tiny, "tiny-raw": tiny_raw, "release": release, "release-raw": release_raw,
    "loso": loso, "loso-raw": loso_raw,
}


# --- long-stream CTC recognition (connected digits, ``speech/mamba-ctc-digits``) ---
# Config of the long-stream connected-digit CTC recogniser (``speech/mamba-ctc-digits``).
#
# Training examples are whole synthetic streams (``streams.py``) of ``stream.min_seconds`` to
# ``stream.max_seconds`` built from TRAIN takes (5-49); evaluation streams come from TEST takes
# (0-4). Every step draws one length for its batch, so there is no padding.
# Presets (``CTC_PRESETS``, reached through ``config.PRESETS``): ``ctc-tiny`` (tests) and
# ``ctc-release`` (the shipped checkpoint). :class:`CTCConfig` subclasses the pipeline's
# ``Config`` (so every preset is a ``config.CONFIG_CLASS``) with its own sections. Dotted overrides work as everywhere
# (``--stream.snr_min 5 --backbone.d_model 128``).

CTC_TASK = "ctc-digits"


@dataclass
class CTCDataConfig:
    root: str = ""  # FSDD recordings folder; "" = $LONGSTREAM_DATA/speech/fsdd/recordings
    speakers: str = ""  # comma-separated subset of speakers ("" = all six)
    eval_streams: int = 4  # evaluate(): number of test streams ...
    eval_seconds: float = 120.0  # ... of this length each (seeds eval_seed, eval_seed + 1, ...)
    eval_seed: int = 1000


@dataclass
class CTCStreamConfig:
    """Training streams (``streams.StreamSpec`` fields plus the length range)."""

    min_seconds: float = 2.0
    max_seconds: float = 8.0
    pause_min: float = 0.1
    pause_max: float = 1.0
    lead_min: float = 0.0
    lead_max: float = 1.0
    snr_min: float = 5.0  # training covers a wider SNR range than the test streams (10-30 dB)
    snr_max: float = 35.0
    clip_gain_db: float = 6.0
    clip_level_db: float = -20.0
    noise: str = "mix"


@dataclass
class CTCModelConfig:
    task: str = CTC_TASK
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    stack: int = 2  # log-mel frames per backbone token (2 x 10 ms = 20 ms tokens)
    dropout: float = 0.1
    vad_weight: float = 0.5  # weight of the per-token speech/pause loss next to CTC
    vad_threshold: float = 0.5
    # word-time calibration (seconds), set after training from train-take streams (ctc_train.calibrate)
    start_offset: float = 0.0
    end_offset: float = 0.0


@dataclass
class CTCTrainConfig:
    steps: int = 3000
    log_every: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 500  # greedy digit error rate on a few train-take validation streams
    save_every: int = 100
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    calib_streams: int = 6  # streams of 60 s used to calibrate the word-time offsets
    init: str = ""  # start from the weights of this CTC checkpoint (dir or hub name) instead of random ones


@dataclass
class CTCConfig(Config):
    data: CTCDataConfig = field(default_factory=CTCDataConfig)
    stream: CTCStreamConfig = field(default_factory=CTCStreamConfig)
    model: CTCModelConfig = field(default_factory=CTCModelConfig)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(d_model=96, n_layers=4, pattern="M"))
    train: CTCTrainConfig = field(default_factory=CTCTrainConfig)


def ctc_tiny() -> CTCConfig:
    """Seconds on one thread: a 16-wide one-layer Mamba on 1-2 s streams (tests)."""
    return CTCConfig(
        data=CTCDataConfig(speakers="jackson", eval_streams=1, eval_seconds=4.0),
        stream=CTCStreamConfig(min_seconds=1.0, max_seconds=2.0),
        model=CTCModelConfig(n_mels=16, dropout=0.0),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="M", mixer_kwargs={"M": {"d_state": 4}}),
        train=CTCTrainConfig(steps=8, batch_size=4, warmup_steps=2, eval_every=0, save_every=4, log_every=1,
                             calib_streams=1),
    )


def ctc_release() -> CTCConfig:
    """``speech/mamba-ctc-digits``: log-mel (20 ms tokens) + 4-layer Mamba (d 96), CTC + speech/pause head."""
    return CTCConfig()


def ctc_finetune() -> CTCConfig:
    """More steps at a lower learning rate from a trained CTC checkpoint: pass ``--train.init DIR``."""
    cfg = ctc_release()
    cfg.train = CTCTrainConfig(steps=1500, lr=1e-3, warmup_steps=50, min_lr_ratio=0.05, eval_every=500, seed=1)
    return cfg


CTC_PRESETS: dict[str, Callable[[], CTCConfig]] = {"ctc-tiny": ctc_tiny, "ctc-release": ctc_release,
                                                   "ctc-finetune": ctc_finetune}


def speakers(cfg: CTCConfig) -> list[str] | None:
    """The speakers ``cfg.data.speakers`` names (comma-separated), or None for all of them."""
    return [s.strip() for s in cfg.data.speakers.split(",") if s.strip()] or None


PRESETS.update(CTC_PRESETS)  # dispatched on in model.py / train.py
