"""Config of the long-stream connected-digit CTC recogniser (``speech/mamba-ctc-digits``).

Training examples are whole synthetic streams (``streams.py``) of ``stream.min_seconds`` to
``stream.max_seconds`` built from TRAIN takes (5-49); evaluation streams come from TEST takes
(0-4). Every step draws one length for its batch, so there is no padding.
Presets (``CTC_PRESETS``, reached through ``config.PRESETS``): ``ctc-tiny`` (tests) and
``ctc-release`` (the shipped checkpoint). :class:`CTCConfig` subclasses the pipeline's
``Config`` (so every preset is a ``config.CONFIG_CLASS``) with its own sections. Dotted overrides work as everywhere
(``--stream.snr_min 5 --backbone.d_model 128``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longstream.backbones.config import BackboneConfig

from .config import Config

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
