"""Template pipeline config: dataclasses, presets as functions.

Dotted CLI overrides address these fields, e.g. ``--train.steps 50 --backbone.d_model 32``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longstream.backbones.config import BackboneConfig


@dataclass
class DataConfig:
    seq_len: int = 64  # samples per series
    n_classes: int = 4  # frequency bins
    noise: float = 0.3  # std of additive Gaussian noise
    n_train: int = 2048
    n_val: int = 256
    n_test: int = 512
    seed: int = 0  # data generation seed (test set uses seed + 1_000_003)


@dataclass
class ModelConfig:
    pool: str = "mean"  # one of common.POOLS: mean, max, last (causal backbones), cls, attention
    dropout: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 200
    log_every: int = 10  # log the training loss every N optimizer steps (metrics.jsonl)
    batch_size: int = 32  # global batch, split across DDP ranks
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    save_every: int = 50  # steps between resumable train states
    patience: int = 0  # early stopping on val loss (0 = off)
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave default)
    device: str = "cpu"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CONFIG_CLASS = Config


def tiny() -> Config:
    """Seconds on one CPU core: used by the tests."""
    return Config(
        data=DataConfig(seq_len=32, n_train=256, n_val=64, n_test=64),
        backbone=BackboneConfig(d_model=16, n_layers=1, pattern="A", mixer_kwargs={"A": {"n_heads": 2}}),
        train=TrainConfig(steps=8, batch_size=16, warmup_steps=2, eval_every=4, save_every=4, log_every=1),
    )


def release() -> Config:
    """The shipped checkpoint ``template/sine-attn`` (about a minute on 2 CPU cores)."""
    return Config(
        data=DataConfig(seq_len=64, n_train=4096, n_val=256, n_test=1024),
        backbone=BackboneConfig(d_model=32, n_layers=2, pattern="A", mixer_kwargs={"A": {"n_heads": 4}}),
        train=TrainConfig(steps=400, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=100, save_every=100),
    )


PRESETS: dict[str, Callable[[], Config]] = {"tiny": tiny, "release": release}
