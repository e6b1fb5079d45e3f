"""Template model: scalar encoder -> registry backbone -> pooled linear head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longstream.pipelines import common

from . import DOMAIN
from .config import Config


class SineClassifier(nn.Module):
    """``(B, L)`` series -> ``(B, n_classes)`` logits."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.backbone.d_model
        self.encoder = nn.Linear(1, d)  # one token per time step
        self.backbone = common.build_backbone(cfg.backbone)  # bad --backbone.* -> UserError
        self.dropout = nn.Dropout(cfg.model.dropout)
        self.head = nn.Linear(d, cfg.data.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(x.unsqueeze(-1))  # (b, l, d)
        h, _ = self.backbone(h)
        h = h[:, -1] if self.cfg.model.pool == "last" else h.mean(1)  # (b, d)
        return self.head(self.dropout(h))

    def save_pretrained(self, out_dir: str | Path, **kw: Any) -> Path:
        return common.save_pretrained(
            self, self.cfg, out_dir, pipeline=DOMAIN, backbone=self.cfg.backbone,
            task="sine-frequency classification (generated data)", **kw,
        )

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> SineClassifier:
        return from_pretrained(name_or_dir)


def build_model(cfg: Config) -> SineClassifier:
    return SineClassifier(cfg)


def from_pretrained(name_or_dir: str | Path) -> SineClassifier:
    """Load a checkpoint dir or hub name (``template/<name>`` or ``<name>``)."""
    sd, meta, _ = common.load_pretrained(name_or_dir, pipeline=DOMAIN)
    cfg = common.config_from_dict(Config, meta["config"])
    return common.load_weights(build_model(cfg), sd, name_or_dir, meta)


@torch.no_grad()
def predict_proba(model: SineClassifier, x: Tensor) -> Tensor:
    """Class probabilities for ``x`` (B, L) or (L,)."""
    if x.dim() == 1:
        x = x[None]
    return torch.softmax(model(x), -1)
