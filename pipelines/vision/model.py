"""Vision models: Vision Mamba, a timm ViT baseline and sequential-pixel Mamba / S4D.

- :class:`VimClassifier` (``model.kind = "vim"``), after Zhu et al., "Vision Mamba:
  Efficient Visual Representation Learning with Bidirectional State Space Model" (ICML 2024):
  a stem turns the image into ``(h/p) * (w/p)`` patch tokens; a learned class token is
  inserted in the middle of the token sequence (Vim's "middle class token"), a learned
  position embedding is added, and a stack of bidirectional Mamba blocks (each mixer run
  left-to-right and right-to-left over the raster order, outputs added) mixes them; the
  class token (or the mean of the patch tokens) feeds a linear head. The backbone is the
  suite's ``SequenceBackbone`` built from ``cfg.backbone`` (``--backbone.*`` works).
- :class:`ViTClassifier` (``"vit"``): timm's ``VisionTransformer`` (DeiT-tiny layout, class
  token first) with the same stem, patch size, width and depth: the baseline.
- :class:`TimmClassifier` (``"timm"``): any timm-registered model by name, e.g. the
  timm-registered Vim of ``vim.py`` (``vim_fmnist``) or ``deit_tiny_patch16_224``.
- :class:`SeqPixelClassifier` (``"seqpix"``): one token per pixel in raster order
  (784 for Fashion-MNIST), ``Linear(c, d)`` embedding, a causal backbone (Mamba ``M``,
  S4D ``S``, ...) and the last token (or mean) classifies: the sequential-MNIST task.

Every model maps ``x`` (b, c, h, w) float, normalised (``data.normalize``) -> (b, n_classes) logits.

Stems: ``"patch"`` is one ``p x p`` stride-``p`` convolution (Vim / ViT); ``"conv"`` puts two
3x3 convolutions (BatchNorm, GELU; the second strided by 2 when ``p`` is even) before a
``p/2`` patch convolution, the early-convolution stem of Xiao et al. 2021, which trains faster
on small data. The same stem is used for the ViT baseline, so the comparison stays fair.

Axis legend: b batch, c channels, h / w height / width, l tokens, d model width, k classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.pipelines import common

from . import DOMAIN
from .config import KINDS, STEMS, Config


def _check(cfg: Config) -> None:
    m, dc = cfg.model, cfg.data
    if m.kind not in KINDS:
        raise common.UserError(f"--model.kind {m.kind!r} is not one of {', '.join(KINDS)}")
    if m.kind in ("vim", "vit"):
        if m.stem not in STEMS:
            raise common.UserError(f"--model.stem {m.stem!r} is not one of {', '.join(STEMS)}")
        if m.patch_size < 1 or dc.img_size % m.patch_size:
            raise common.UserError(f"--model.patch_size {m.patch_size} must divide --data.img_size {dc.img_size}")
        if m.stem == "conv" and m.patch_size % 2 and m.patch_size != 1:
            raise common.UserError(f"--model.stem conv needs an even --model.patch_size (or 1), got {m.patch_size}")
    if dc.in_chans not in (1, 3):
        raise common.UserError(f"--data.in_chans {dc.in_chans} must be 1 (greyscale) or 3 (RGB)")
    if len(dc.class_names) < 2:
        raise common.UserError("--data.class_names needs at least two classes")


class Stem(nn.Module):
    """(b, c, h, w) -> (b, l, d) patch tokens, l = (h / p) * (w / p)."""

    def __init__(self, in_chans: int, d: int, patch: int, kind: str, width: int) -> None:
        super().__init__()
        if kind == "patch":
            self.convs = nn.Identity()
            self.proj = nn.Conv2d(in_chans, d, patch, stride=patch)
        else:
            s2 = 2 if patch % 2 == 0 else 1
            self.convs = nn.Sequential(
                nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
                nn.Conv2d(width, 2 * width, 3, stride=s2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.GELU(),
            )
            k = patch // s2
            self.proj = nn.Conv2d(2 * width, d, k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)  # (b, l, d)


class _Base(nn.Module):
    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
                                      task="image classification", **kw)


class VimClassifier(_Base):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d, m, dc = cfg.backbone.d_model, cfg.model, cfg.data
        self.stem = Stem(dc.in_chans, d, m.patch_size, m.stem, m.stem_channels)
        n = (dc.img_size // m.patch_size) ** 2
        self.cls_pos = n // 2 if m.pool == "cls" else -1  # middle class token
        n_tok = n + (1 if m.pool == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tok, d) * 0.02)
        self.backbone = common.build_backbone(cfg.backbone)
        self.head = common.SequenceClassifier(d, len(dc.class_names), pool=m.pool if m.pool == "mean" else "cls",
                                              dropout=m.dropout, cls_index=max(self.cls_pos, 0))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # (b, l, d)
        if self.cls_pos >= 0:
            c = self.cls_token.expand(h.shape[0], -1, -1)
            h = torch.cat([h[:, : self.cls_pos], c, h[:, self.cls_pos:]], 1)  # (b, l + 1, d)
        h, _ = self.backbone(h + self.pos_embed)
        return self.head(h)  # (b, k)


class ViTClassifier(_Base):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.cfg = cfg
        d, m, dc = cfg.backbone.d_model, cfg.model, cfg.data
        if d % m.vit_heads:
            raise common.UserError(f"--backbone.d_model {d} must be a multiple of --model.vit_heads {m.vit_heads}")
        stem = Stem(dc.in_chans, d, m.patch_size, m.stem, m.stem_channels)
        self.vit = VisionTransformer(
            img_size=dc.img_size, patch_size=m.patch_size, in_chans=dc.in_chans, num_classes=len(dc.class_names),
            embed_dim=d, depth=cfg.backbone.n_layers, num_heads=m.vit_heads, mlp_ratio=m.vit_mlp_ratio,
            global_pool="token" if m.pool == "cls" else "avg", drop_rate=m.dropout,
        )
        self.vit.patch_embed.proj = nn.Identity()  # the shared stem replaces timm's patch conv
        self.stem = stem

    def forward(self, x: Tensor) -> Tensor:
        v = self.vit
        h = self.stem(x)  # (b, l, d)
        h = v._pos_embed(h)
        h = v.norm_pre(h)
        h = v.blocks(h)
        h = v.norm(h)
        return v.forward_head(h)


class TimmClassifier(_Base):
    """Any timm-registered classifier (``model.timm_name``), e.g. ``vim_fmnist`` from ``vim.py``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        import timm

        from . import vim  # noqa: F401  (registers the vim_* models with timm)

        self.cfg = cfg
        m, dc = cfg.model, cfg.data
        if m.timm_name not in timm.list_models():
            raise common.UserError(f"--model.timm_name {m.timm_name!r} is not a timm model; e.g. vim_fmnist, "
                                   "deit_tiny_patch16_224 (timm.list_models() lists them)")
        kw = {"img_size": dc.img_size, "in_chans": dc.in_chans, "num_classes": len(dc.class_names),
              "patch_size": m.patch_size, "embed_dim": cfg.backbone.d_model, "depth": cfg.backbone.n_layers}
        if "vit" in m.timm_name or "deit" in m.timm_name:
            kw["num_heads"] = m.vit_heads
        try:
            self.net = timm.create_model(m.timm_name, pretrained=False, **kw)
        except (TypeError, ValueError, AssertionError) as e:
            raise common.UserError(f"--model.timm_name {m.timm_name!r}: timm cannot build it with {kw} ({e})") from e

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SeqPixelClassifier(_Base):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d, m, dc = cfg.backbone.d_model, cfg.model, cfg.data
        self.embed = nn.Linear(dc.in_chans, d)
        self.backbone = common.build_backbone(cfg.backbone)
        self.head = common.SequenceClassifier(d, len(dc.class_names), pool=m.pool if m.pool in ("last", "mean") else "last",
                                              dropout=m.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.flatten(2).transpose(1, 2))  # (b, h w, c) -> (b, l, d)
        h, _ = self.backbone(h)
        return self.head(h)


def build_model(cfg: Config) -> nn.Module:
    """The model of ``cfg`` (random weights); bad settings are a ``UserError``."""
    _check(cfg)
    kinds = {"vim": VimClassifier, "vit": ViTClassifier, "seqpix": SeqPixelClassifier, "timm": TimmClassifier}
    return kinds[cfg.model.kind](cfg)


def example_batch(cfg: Config, batch_size: int = 2) -> dict[str, Tensor]:
    """One tiny forward pass: ``build_model(cfg)(**example_batch(cfg))`` (full-size images,
    which are small; a seqpix model gets an 8x8 image so its token count stays tiny)."""
    g = torch.Generator().manual_seed(0)
    s = cfg.data.img_size if cfg.model.kind != "seqpix" else 8
    return {"x": torch.randn(batch_size, cfg.data.in_chans, s, s, generator=g)}


def from_pretrained(name_or_dir: str | Path) -> nn.Module:
    """Load a checkpoint dir or hub name (``vision/<name>`` or ``<name>``)."""
    sd, meta, path = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    with common.checkpoint_errors(path):
        cfg = common.config_from_dict(Config, meta["config"])
        return common.load_weights(build_model(cfg), sd, path, meta)


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Class probabilities (n, k) for normalised images x (n, c, h, w), in batches."""
    model.eval()
    return torch.cat([torch.softmax(model(x[i:i + batch_size]).float(), -1) for i in range(0, len(x), batch_size)])
