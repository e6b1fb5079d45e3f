"""Vision pipeline config: dataclasses, presets as functions (issue 15).

Three model kinds, chosen by ``model.kind``:

- ``vim``: Vision Mamba (Zhu et al. 2024): image -> stem -> patch tokens + a class token in
  the middle of the sequence + learned position embedding -> bidirectional Mamba stack
  (``backbone.bidirectional``) -> the class token -> linear head.
- ``vit``: the DeiT-tiny-style baseline, timm's ``VisionTransformer`` with the same stem,
  patch size, width (``backbone.d_model``) and depth (``backbone.n_layers``).
- ``timm``: any timm-registered classifier by name (``model.timm_name``: ``vim_fmnist``, the
  timm-registered Vim of ``vim.py``, or ``deit_tiny_patch16_224`` ...), built with this config's
  image size, channels, classes, ``backbone.d_model`` (embed_dim) and ``backbone.n_layers`` (depth).
- ``seqpix``: sequential pixels: every pixel is one token (784 for 28x28), raster order,
  through a causal Mamba (``M``) or S4D (``S``) stack; the last token classifies.

Dotted overrides address these fields (``--model.kind vit --train.steps 100``).
Presets: ``tiny`` (tests), ``release`` (the shipped ``vision/vim-fmnist``), ``vit-release``
(the ViT baseline, same budget), ``seqpix-mamba`` / ``seqpix-s4d`` (sequential pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longstream.backbones.config import BackboneConfig

KINDS = ("vim", "vit", "seqpix", "timm")
STEMS = ("patch", "conv")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class DataConfig:
    root: str = ""  # an IDX folder (Fashion-MNIST layout) or an ImageFolder dir; "" = $LONGSTREAM_DATA/vision/fashion-mnist
    img_size: int = 28  # images are resized to img_size x img_size
    in_chans: int = 1  # 1 = greyscale (RGB inputs are converted), 3 = RGB
    class_names: list[str] = field(default_factory=lambda: list(FMNIST_CLASSES))
    mean: float = 0.2860  # normalisation after scaling to [0, 1] (Fashion-MNIST train statistics)
    std: float = 0.3530
    val_size: int = 1000  # held out from the end of the training split for monitoring
    n_train: int = 0  # >0: use only the first n_train training images (tests)
    n_test: int = 0  # >0: evaluate on the first n_test test images (tests)
    crop_pad: int = 2  # augmentation: random crop after zero-padding by this many pixels
    hflip: bool = True  # augmentation: random horizontal flip
    invert: str = "auto"  # predict on image files: auto | never | always (Fashion-MNIST is light-on-dark)


@dataclass
class ModelConfig:
    kind: str = "vim"  # vim | vit | seqpix | timm
    timm_name: str = "vim_fmnist"  # kind "timm": the timm model name
    patch_size: int = 4  # vim / vit: tokens are patch_size x patch_size patches
    stem: str = "conv"  # vim / vit: "patch" (one strided conv, as in Vim / ViT) or "conv" (3x3 convs first)
    stem_channels: int = 32  # width of the conv stem
    pool: str = "cls"  # vim: "cls" (middle class token) or "mean"; seqpix: "last" or "mean"
    vit_heads: int = 4  # vit: attention heads
    vit_mlp_ratio: float = 4.0
    dropout: float = 0.0  # before the head
    label_smoothing: float = 0.1


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 20
    eval_every: int = 470  # steps between validation passes (0 = never)
    save_every: int = 100  # steps between resumable train states
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


def _vim_backbone(d: int, depth: int, d_state: int = 16) -> BackboneConfig:
    return BackboneConfig(d_model=d, n_layers=depth, pattern="M", bidirectional=True,
                          mixer_kwargs={"M": {"d_state": d_state, "expand": 2}})


def tiny() -> Config:
    """Seconds on one CPU core: used by the tests (512 training images)."""
    return Config(
        data=DataConfig(n_train=512, val_size=64, n_test=256),
        model=ModelConfig(stem_channels=8),
        backbone=_vim_backbone(16, 1, d_state=4),
        train=TrainConfig(steps=8, batch_size=16, eval_batch_size=128, warmup_steps=2, eval_every=4,
                          save_every=4, log_every=1, lr=3e-3),
    )


def release() -> Config:
    """The shipped ``vision/vim-fmnist``: Vim d=96, depth 4, patch 4 over a conv stem, mean-pooled;
    20 epochs of the 59,000 training images at batch 64 (18,420 steps; ~110 min of one core with its
    evaluations, the other core busy)."""
    return Config(
        model=ModelConfig(pool="mean"),
        backbone=_vim_backbone(96, 4),
        train=TrainConfig(steps=18420, batch_size=64, lr=2e-3, warmup_steps=200, eval_every=3684, save_every=100),
    )


def vit_release() -> Config:
    """The DeiT-tiny-style baseline: timm ViT, same stem, patch, width and depth as ``release``, at the
    10-epoch budget of the README's same-budget comparison (9,210 steps x 64; ``--train.steps 18420
    --train.eval_every 3684`` gives the shipped Vim's 20 epochs)."""
    cfg = release()
    cfg.train.steps, cfg.train.eval_every = 9210, 1842
    cfg.model.kind = "vit"
    cfg.model.vit_heads = 3  # DeiT-tiny's 3 heads
    cfg.backbone = BackboneConfig(d_model=96, n_layers=4, pattern="A")  # width / depth read by the ViT
    return cfg


def _seqpix(symbol: str, kwargs: dict) -> Config:
    return Config(
        data=DataConfig(crop_pad=0, hflip=False),
        model=ModelConfig(kind="seqpix", pool="last", label_smoothing=0.0),
        backbone=BackboneConfig(d_model=64, n_layers=4, pattern=symbol, mixer_kwargs={symbol: kwargs}),
        train=TrainConfig(steps=1800, batch_size=32, lr=2e-3, warmup_steps=100, eval_every=300, save_every=50,
                          eval_batch_size=250),
    )


def seqpix_mamba() -> Config:
    """Sequential-pixel Fashion-MNIST (784 tokens) with a causal Mamba stack (d=64, 4 layers)."""
    return _seqpix("M", {"d_state": 16})


def seqpix_s4d() -> Config:
    """Sequential-pixel Fashion-MNIST (784 tokens) with an S4D stack (d=64, 4 layers); the shipped
    ``vision/s4d-seqpix-fmnist``: 3 epochs (5,400 steps x 32 = 172,800 images; 35 min at one thread)."""
    cfg = _seqpix("S", {"d_state": 64})
    cfg.train.steps, cfg.train.eval_every = 5400, 1800
    return cfg


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": tiny, "release": release, "vit-release": vit_release,
    "seqpix-mamba": seqpix_mamba, "seqpix-s4d": seqpix_s4d,
}
